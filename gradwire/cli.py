"""``gradwire`` command line: ``serve``, ``demo``, ``bench`` (subcommands import lazily)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "serve": "gradwire.server.cli",
        "demo": "gradwire.client.demo",
        "bench": "gradwire.bench",
    }
    if not argv or argv[0] not in commands:
        print("usage: gradwire {" + ",".join(commands) + "} [options]   (gradwire COMMAND -h for help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(commands[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
