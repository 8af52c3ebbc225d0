"""gradwire bench: the benchmarks (``gradwire.bench``) behind the command line's parser."""

from __future__ import annotations

from . import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    from gradwire.bench import main as run_benchmarks

    return run_benchmarks(argv, parser_class=ArgumentParser)
