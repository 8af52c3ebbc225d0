"""gradwire: exact gradients of computational graphs, in-process, over gRPC, or across Ray workers.

``import gradwire as gw`` gives the SDK: ``gw.Graph``, one function per op (``gw.relu``,
``gw.sum``, ...), ``gw.local()`` for the in-process engine and ``gw.connect()`` for a server.
"""

from pathlib import Path as _Path

# In a source checkout run from its root, this folder shadows the installed package, and its
# subpackages live in the sibling fixed folders (worker/, server/, ...): make them importable.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "worker" / "ops").is_dir() and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (module __path__)



def _version() -> str:
    """The installed distribution's version; in a checkout that is not installed, pyproject's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradwire")
    except PackageNotFoundError:
        import tomllib

        try:
            with open(_checkout / "pyproject.toml", "rb") as f:
                return tomllib.load(f)["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()

from gradwire.client import *  # noqa: E402,F401,F403
from gradwire.client import __all__  # noqa: E402,F401
