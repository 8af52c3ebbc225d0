"""The package's layout as tools see it: imports between the folders are explicit relative
imports that resolve to files in the checkout (IDEs, type checkers and drawings of the structure
do not know setuptools' ``package-dir`` mapping), and they point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("worker", "server", "client", "protos", "bench")
# who may import whom (besides itself); the CLI (gradwire/cli/) sits on top and no folder imports it
ALLOWED = {
    "protos": set(),
    "worker": {"protos"},
    "server": {"worker", "protos"},
    "client": {"worker", "protos"},
    "bench": {"worker", "protos", "server", "client"},
}
GENERATED = ("_pb2.py", "_pb2_grpc.py")  # protoc's output, checked byte for byte by test_protos


def _modules():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not path.name.endswith(GENERATED):
                yield path


def _imports(path: Path):
    """``(line, level, module)`` of every import statement (lazy ones in functions included)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            yield node.lineno, node.level, node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, 0, alias.name


def _target(path: Path, level: int, module: str) -> Path:
    """The folder or file a relative import names, read as a tool reads it: from the file's own folder."""
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    return base.joinpath(*module.split(".")) if module else base


MODULES = list(_modules())


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_imports_between_folders_are_relative_and_resolve_in_the_checkout(path):
    folder = path.relative_to(ROOT).parts[0]
    for line, level, module in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if level == 0:
            parts = module.split(".")
            # the public facade, as a user imports it: only the benchmarks do
            assert parts[0] != "gradwire" or (module == "gradwire" and folder == "bench"), \
                f"{where}: absolute import of {module!r}; import the package's own folders relatively"
            continue
        target = _target(path, level, module)
        assert target.with_suffix(".py").is_file() or (target / "__init__.py").is_file(), \
            f"{where}: {'.' * level}{module} names no file of the checkout ({target})"
        other = target.relative_to(ROOT).parts[0] if target != ROOT else "<root>"
        assert other == folder or other in ALLOWED[folder], f"{where}: {folder}/ must not import {other}/"


def test_the_check_sees_the_imports_it_judges(tmp_path):
    """The parser finds lazy imports inside functions, and the resolver follows dots as a tool does."""
    module = ROOT / "server" / "app.py"
    found = list(_imports(module))
    assert any(level == 2 and mod.startswith("worker") for _, level, mod in found)
    assert _target(module, 2, "worker.engine") == ROOT / "worker" / "engine"
    assert _target(ROOT / "worker" / "ops" / "math.py", 2, "") == ROOT / "worker"
    sample = tmp_path / "lazy.py"
    sample.write_text("def f():\n    from ..client import remote\n")
    assert list(_imports(sample)) == [(2, 2, "client")]
