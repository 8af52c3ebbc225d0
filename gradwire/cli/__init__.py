"""The gradwire command line: serve, train, jobs, demo, bench (subcommands import lazily).

One place turns a user's mistake into one line on stderr, ``gradwire: error: ...``, and exit
status 2: argument errors of every parser built with ``ArgumentParser`` below, ``UsageError``
raised by a subcommand, gradwire's own errors (``gw.GradwireError``) and a missing file.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {  # name: (module:function, what it does)
    "serve": ("gradwire.cli.serve:main", "run a coordinator: the gRPC server that computes gradients and runs jobs"),
    "train": ("gradwire.cli.train:train_main",
              "train a model file on a .npz dataset as a server-side job (starts a server unless --server)"),
    "jobs": ("gradwire.cli.train:jobs_main", "list, watch, cancel or remove the training jobs of a server"),
    "demo": ("gradwire.cli.demo:main",
             "start a server here, check its gradients against the local engine, train a few steps"),
    "bench": ("gradwire.cli.bench:main", "run the benchmarks: a table on stdout, JSON in a file"),
}


class UsageError(Exception):
    """A mistake of the user's (a missing file, a bad option, an unreachable server): the
    command line prints ``gradwire: error: <message>`` and exits 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless it has none worth showing (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        if default == "":
            return text + " (default: none)"
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in ``-h`` and a mistake reported in one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = kwargs["description"].replace("``", "")
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(f"{self.prog}: {message} (see '{self.prog} -h')")


def one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def fail(message: str, status: int = 2):
    """Print ``gradwire: error: message`` (one line) and exit."""
    sys.stderr.write(f"gradwire: error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def run(function, argv: list[str]) -> int:
    """Call a subcommand's main, reporting the user's mistakes in one line (exit 2)."""
    from gradwire.worker.errors import GradwireError

    try:
        return int(function(argv) or 0)
    except UsageError as exc:
        fail(str(exc))
    except GradwireError as exc:
        fail(str(exc) or type(exc).__name__)
    except FileNotFoundError as exc:
        fail(f"{exc.filename}: no such file or directory" if exc.filename else str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("gradwire: interrupted\n")
        return 130


def version() -> str:
    import gradwire

    return gradwire.__version__


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gradwire [-h] [--version] COMMAND [options]", "",
             "Distributed gradient computation: graphs over gRPC, exact gradients by NumPy kernels on Ray workers.",
             "", "commands:"]
    lines += [f"  {name:{width}s}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit", "  --version   print gradwire's version and exit",
              "", "'gradwire COMMAND -h' lists a command's options, their choices and defaults."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.stderr.write(help_text())
        return 2
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(help_text())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"gradwire {version()}")
        return 0
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}: choose from {', '.join(COMMANDS)} (see 'gradwire -h')")
    import importlib

    module, function = COMMANDS[argv[0]][0].split(":")
    return run(getattr(importlib.import_module(module), function), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
