"""Regenerate the checked-in Python code from gradwire.proto: ``python protos/generate.py``.

protoc is given the file as ``gradwire/protos/gradwire.proto`` so the generated modules
import each other as ``gradwire.protos.*``. ``--check`` compares instead of writing (the
drift test uses it).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("gradwire_pb2.py", "gradwire_pb2.pyi", "gradwire_pb2_grpc.py")


def generate(into: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / "gradwire" / "protos"
        staged.mkdir(parents=True)
        shutil.copy(HERE / "gradwire.proto", staged / "gradwire.proto")
        out = Path(tmp) / "out"
        out.mkdir()
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main([
            "protoc", f"-I{Path(tmp) / 'src'}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            "gradwire/protos/gradwire.proto",
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        for name in OUTPUTS:
            shutil.copy(out / "gradwire" / "protos" / name, into / name)


def check() -> list[str]:
    """Names of the generated files that differ from what the .proto generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [n for n in OUTPUTS if (Path(tmp) / n).read_bytes() != (HERE / n).read_bytes()]


if __name__ == "__main__":
    if "--check" in sys.argv:
        stale = check()
        print("up to date" if not stale else f"stale: {stale}; run python protos/generate.py")
        sys.exit(1 if stale else 0)
    generate(HERE)
    print("generated", ", ".join(OUTPUTS))
