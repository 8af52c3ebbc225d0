"""``gradwire serve``: run the coordinator. Flags override GRADWIRE_* environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields

from gradwire.server.config import ServerConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradwire serve", description=__doc__)
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        env = "GRADWIRE_" + f.name.upper()
        if f.name == "data_roots":
            parser.add_argument("--data-root", dest="data_roots", action="append", default=None, metavar="DIR",
                                help=f"a folder jobs may read datasets from; repeatable (env {env}, "
                                     f"{os.pathsep!r}-separated; default none: path datasets are off)")
        elif f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(env {env}; default {f.default})")
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None,
                                help=f"(env {env}; default {f.default})")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=args.pop("log_level").upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.get("data_roots") is not None:
        args["data_roots"] = os.pathsep.join(args["data_roots"])
    config = ServerConfig.from_env(**args)
    from gradwire.server.app import serve_forever
    from gradwire.server.auth import TokenFileError

    try:
        serve_forever(config)
    except TokenFileError as exc:  # names the file and line, never a token
        print(f"gradwire serve: {exc}", file=sys.stderr)
        return 2
    return 0
