"""gradwire serve: run the coordinator. Flags override GRADWIRE_* environment variables."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import socket
from dataclasses import fields

from . import ArgumentParser, UsageError
from gradwire.server.config import ServerConfig

CHOICES = {"backend": ["local", "ray"], "placement": ["auto", "ray", "local"]}
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _field_notes() -> dict[str, str]:
    """Each setting's comment in ServerConfig's source (the line's own, else the lines above)."""
    notes, above = {}, []
    try:
        source = inspect.getsource(ServerConfig)
    except (OSError, TypeError):  # pragma: no cover - no source (a zipped install)
        return notes
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+):\s*[^=]+=.*?(?:#\s*(.*))?$", stripped)
        if match:
            notes[match.group(1)] = (match.group(2) or " ".join(above)).strip()
        above = []
    return notes


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gradwire serve", description=__doc__)
    notes = _field_notes()
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        env = "GRADWIRE_" + f.name.upper()
        note = notes.get(f.name, "").replace("%", "%%")
        if f.name == "data_roots":
            parser.add_argument("--data-root", dest="data_roots", action="append", default=None, metavar="DIR",
                                help=f"a folder jobs may read datasets from; repeatable (env {env}, "
                                     f"{os.pathsep!r}-separated; default none: path datasets are off)")
        elif f.type == "bool":
            parser.add_argument(flag, action=_bool_action(), default=None,
                                help=f"{note} (env {env}; default {f.default})".lstrip())
        else:
            default = f.default if f.default != "" else "none"
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None,
                                choices=CHOICES.get(f.name),
                                help=f"{note} (env {env}; default {default})".lstrip())
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="logging threshold")
    return parser


def _bool_action():
    import argparse

    return argparse.BooleanOptionalAction


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port already (checked before gRPC tries, whose own
    failure comes with a C-level log line on stderr)."""
    if not port:
        return False
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed port in TIME_WAIT is free
            probe.bind(address)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def _busy(where: str) -> UsageError:
    return UsageError(f"cannot listen on {where}: address already in use (another process holds the port; "
                      f"choose another --port)")


def start_error(config: ServerConfig, exc: BaseException) -> UsageError | None:
    """A server that could not start, in the user's terms; None if it is not the user's doing."""
    text = str(exc)
    if isinstance(exc, (OSError, RuntimeError)) and ("bind" in text.lower() or "address" in text.lower()):
        where = f"{config.host}:{config.port}"
        if _port_in_use(config.host, config.port):
            return _busy(where)
        return UsageError(f"cannot listen on {where}: {text} (check --host and --port)")
    if isinstance(exc, (OSError, ValueError)) or "in use by another gradwire server" in text:
        return UsageError(text)
    return None


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=args.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.get("data_roots") is not None:
        args["data_roots"] = os.pathsep.join(args["data_roots"])
    try:
        config = ServerConfig.from_env(**args)
    except ValueError as exc:  # a GRADWIRE_* variable that does not parse
        raise UsageError(str(exc)) from None
    if config.backend not in CHOICES["backend"]:
        raise UsageError(f"unknown backend {config.backend!r} (GRADWIRE_BACKEND or --backend): "
                         f"choose from {', '.join(CHOICES['backend'])}")
    if _port_in_use(config.host, config.port):
        raise _busy(f"{config.host}:{config.port}")
    from gradwire.server.app import serve_forever

    try:
        serve_forever(config)  # returns after SIGTERM/SIGINT has drained the server
    except (OSError, RuntimeError, ValueError) as exc:  # a token file names its file and line, never a token
        error = start_error(config, exc)
        if error is None:
            raise
        raise error from None
    return 0
