"""``gradwire`` command line: serve, demo, train, jobs, bench (subcommands import lazily)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "serve": "gradwire.server.cli:main",
        "demo": "gradwire.client.demo:main",
        "train": "gradwire.client.train_cli:train_main",
        "jobs": "gradwire.client.train_cli:jobs_main",
        "bench": "gradwire.bench:main",
    }
    if not argv or argv[0] not in commands:
        print("usage: gradwire {" + ",".join(commands) + "} [options]   (gradwire COMMAND -h for help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module, function = commands[argv[0]].split(":")
    return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
