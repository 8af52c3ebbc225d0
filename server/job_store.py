"""The job folder: where it is, who holds it, and how it stays small.

* The default folder is per user (``$XDG_STATE_HOME/gradwire/jobs``, else
  ``~/.local/state/gradwire/jobs``); servers the CLI and the examples start for themselves
  use a private temporary folder (``private_job_dir``), removed when they stop.
* One server per folder: an exclusive ``flock`` on ``.lock`` (holding the holder's pid), taken
  at start; a second server on the same folder refuses to start, naming the folder and pid.
  The kernel drops the lock when its process dies, so a killed server leaves no stale lock.
* Retention: a finished job's events log is compacted (its state changes and at most
  ``COMPACT_TO`` progress events), and beyond ``--keep-finished`` finished jobs the oldest
  folders go.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

COMPACT_TO = 200  # progress events a finished job's log keeps (evenly spaced, the last included)


def default_job_dir(environ=os.environ) -> str:
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "gradwire", "jobs")


class FolderInUse(RuntimeError):
    """Another server holds the job folder."""


def lock_job_dir(root: Path):
    """Hold ``root`` for this process (the returned file keeps the lock while it is open)."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderInUse(f"job folder {str(root)!r} is in use by another gradwire server (pid {holder}); "
                          "give this one its own --job-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@contextlib.contextmanager
def private_job_dir():
    """A temporary job folder for a server started for one command, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="gradwire-jobs-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compact_events(path: Path, keep: int = COMPACT_TO) -> None:
    """Rewrite a finished job's events log with its state changes and ``keep`` progress events."""
    if not path.exists():
        return
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    running = [i for i, e in enumerate(events) if e.get("state") == "running" and not e.get("message")]
    if len(running) <= keep:
        return
    stride = len(running) / keep
    kept = {running[int(k * stride)] for k in range(keep)} | {running[-1]}
    dropped = set(running) - kept  # built once: a long job has a million progress events
    lines = [json.dumps(e) + "\n" for i, e in enumerate(events) if i not in dropped]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def prune_finished(root: Path, keep: int, final_states: tuple[str, ...]) -> list[str]:
    """Remove the oldest finished job folders beyond ``keep``; the ids removed."""
    finished = []
    for state in root.glob("j-*/state"):
        try:
            if state.read_text() in final_states:
                finished.append((state.stat().st_mtime, state.parent))
        except OSError:
            continue
    finished.sort()
    removed = []
    for _, folder in finished[:max(0, len(finished) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed
