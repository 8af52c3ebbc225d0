"""A command line people can trust, run as real subprocesses (`python -m gradwire ...`): a user's
mistake is one line on stderr, `gradwire: error: ...`, and exit status 2, never a traceback;
`--version`; `-h` texts with their choices and defaults; progress that does not flood a log;
`--plot` that never overwrites silently; `jobs watch` from the latest event; Ctrl-C that says
what happens to the job. The local backend only: no Ray here."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "examples" / "mlp.py")
TIMEOUT = 120


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    return {**env, **extra}


def _gradwire(*args, cwd=ROOT, env=None, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-m", "gradwire", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or _env())


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradwire: error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=400)
    x = (rng.normal(size=(400, 64)) + np.eye(10, 64)[y] * 3).astype(np.float32)
    np.savez(tmp / "data.npz", x=x, y=y.astype(np.int64))
    np.save(tmp / "array.npy", x)
    (tmp / "text.npz").write_text("not an archive\n")
    (tmp / "nobuild.py").write_text("x = 1\n")
    (tmp / "tokens").write_text("# tokens\nonly-a-token-no-tenant\n")
    return tmp


def _train(files, *extra):
    return ["train", "--model", MODEL, "--data", files / "data.npz", "--out", files / "params.npz", *extra]


MISTAKES = {
    "missing --data file": (lambda f: ["train", "--model", MODEL, "--data", f / "nope.npz"], ["--data", "nope.npz"]),
    "missing --model file": (lambda f: ["train", "--model", f / "nope.py", "--data", f / "data.npz"],
                             ["--model", "nope.py"]),
    "model without build": (lambda f: ["train", "--model", f / "nobuild.py", "--data", f / "data.npz"], ["build"]),
    "text file as --data": (lambda f: ["train", "--model", MODEL, "--data", f / "text.npz"], ["not a .npz"]),
    ".npy as --data": (lambda f: ["train", "--model", MODEL, "--data", f / "array.npy"], ["not a .npz"]),
    "no --model": (lambda f: ["train", "--data", f / "data.npz"], ["--model"]),
    "--momentum with adam": (lambda f: _train(f, "--optimizer", "adam", "--momentum", "0.9"), ["--momentum", "adam"]),
    "negative learning rate": (lambda f: _train(f, "--lr", "-0.1"), ["lr"]),
    "zero batch size": (lambda f: _train(f, "--batch-size", "0"), ["--batch-size"]),
    "unknown train backend": (lambda f: _train(f, "--backend", "gpu"), ["gpu", "local", "ray"]),
    "unknown optimizer": (lambda f: _train(f, "--optimizer", "lbfgs"), ["lbfgs"]),
    "unreachable train server": (lambda f: _train(f, "--server", "127.0.0.1:1"), ["127.0.0.1:1", "--server"]),
    "unreachable jobs server": (lambda f: ["jobs", "list", "--server", "127.0.0.1:1"], ["127.0.0.1:1", "--server"]),
    "jobs watch without id": (lambda f: ["jobs", "watch", "--server", "127.0.0.1:1"], ["job id"]),
    "unknown serve backend": (lambda f: ["serve", "--port", "0", "--backend", "gpu"], ["gpu"]),
    "unknown demo backend": (lambda f: ["demo", "--backend", "gpu"], ["gpu"]),
    "bad token file": (lambda f: ["serve", "--port", "0", "--job-dir", f / "jobs-t", "--auth-tokens", f / "tokens"],
                       ["line 2"]),
    "missing token file": (lambda f: ["serve", "--port", "0", "--job-dir", f / "jobs-t", "--auth-tokens",
                                      f / "no-tokens"], ["no-tokens"]),
    "unknown command": (lambda f: ["sever"], ["sever", "serve"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_user_mistake_is_one_line_and_exit_2(name, files):
    make_args, fragments = MISTAKES[name]
    assert_one_line_error(_gradwire(*make_args(files)), *fragments)


def test_a_bad_environment_variable_is_one_line(files):
    out = _gradwire("serve", "--port", "0", "--job-dir", files / "jobs-env", env=_env(GRADWIRE_BACKEND="gpu"))
    assert_one_line_error(out, "gpu", "GRADWIRE_BACKEND")
    out = _gradwire("serve", "--port", "0", "--job-dir", files / "jobs-env", env=_env(GRADWIRE_MAX_NODES="many"))
    assert_one_line_error(out, "GRADWIRE_MAX_NODES")


def test_a_busy_port_says_address_already_in_use(files):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = _gradwire("serve", "--port", port, "--job-dir", files / "jobs-busy")
    assert_one_line_error(out, "address already in use", f"127.0.0.1:{port}", "--port")


def _serve(tmp: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "gradwire", "serve", "--port", str(port), "--job-dir",
                             str(tmp / "jobs"), "--grace-seconds", "0"], cwd=tmp, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the server did not listen")


@pytest.fixture(scope="module")
def served(free_port, tmp_path_factory):
    """A `gradwire serve` process on the local backend; (address, its folder)."""
    tmp = tmp_path_factory.mktemp("served")
    port = free_port()
    proc = _serve(tmp, port)
    try:
        yield f"127.0.0.1:{port}", tmp
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_job_folder_in_use_is_one_line(served):
    _, tmp = served
    out = _gradwire("serve", "--port", "0", "--job-dir", tmp / "jobs")
    assert_one_line_error(out, "in use by another gradwire server")


def test_version_is_the_package_version():
    import gradwire

    out = _gradwire("--version")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.strip() == f"gradwire {gradwire.__version__}"
    try:
        from importlib.metadata import PackageNotFoundError, version

        expected = version("gradwire")
    except PackageNotFoundError:
        expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gradwire.__version__ == expected


def test_top_level_help_describes_every_command():
    out = _gradwire("-h")
    assert out.returncode == 0
    for command in ("serve", "train", "jobs", "demo", "bench"):
        assert re.search(rf"^  {command}\s+\S", out.stdout, re.MULTILINE), (command, out.stdout)
    assert "--version" in out.stdout


@pytest.mark.parametrize("command, expected", [
    ("train", ["{adam,adamw,sgd}", "(default: adam)", "{local,ray}", "(default: local)", "(default: 0.001)",
               "(default: 256)", "(default: params.npz)", "0: the server's default plan", "--force"]),
    ("jobs", ["{list,watch,cancel,rm}", "(default: list)", "(default: 127.0.0.1:50051)", "--from-start"]),
    ("demo", ["{local,ray}", "(default: local)", "(default: 20)", "(default: 0.5)"]),
    ("serve", ["{local,ray}", "default local", "default 50051", "default 127.0.0.1", "{auto,ray,local}",
               "(default: INFO)", "GRADWIRE_PORT"]),
])
def test_help_lists_choices_and_defaults(command, expected):
    out = _gradwire(command, "-h")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for fragment in expected:
        assert fragment in text, (fragment, out.stdout)
    assert "``" not in out.stdout  # no reStructuredText markup


def test_progress_off_a_terminal_is_a_few_lines(files, tmp_path):
    """2000 steps, stderr a pipe: a line every few seconds and one for the last step, not 2000,
    and no first rate of thousands of steps per second over a few milliseconds."""
    start = time.monotonic()
    out = _gradwire(*_train(files, "--epochs", "20", "--batch-size", "4"), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert "done: 2000 steps" in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("step ")]
    assert out.stderr.splitlines() == lines  # nothing else (no bar, no warnings)
    assert 1 <= len(lines) <= 2 + elapsed / 5, out.stderr
    assert lines[-1].startswith("step 2000/2000") and "step/s" in lines[-1]
    assert "\r" not in out.stderr
    assert not (tmp_path / "loss.png").exists()  # a plot only where told


def test_plot_never_overwrites_without_force(files, tmp_path):
    plot = tmp_path / "loss.png"
    plot.write_bytes(b"precious")
    out = _gradwire(*_train(files, "--epochs", "1", "--batch-size", "100", "--plot", plot), cwd=tmp_path)
    assert_one_line_error(out, str(plot), "--force")
    assert plot.read_bytes() == b"precious" and "job " not in out.stdout  # refused before any training
    out = _gradwire(*_train(files, "--epochs", "1", "--batch-size", "100", "--plot", plot, "--force"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    if "no loss curve" not in out.stdout:  # matplotlib installed
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jobs_watch_starts_at_the_latest_event(files, served, tmp_path):
    address, _ = served
    out = _gradwire(*_train(files, "--server", address, "--epochs", "2", "--batch-size", "50"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("job ", 1)[1].split()[0]
    latest = _gradwire("jobs", "watch", job_id, "--server", address)
    assert latest.returncode == 0 and f"job {job_id}: done" in latest.stdout
    assert "step " not in latest.stderr  # a finished job: nothing to replay
    replay = _gradwire("jobs", "watch", job_id, "--server", address, "--from-start")
    assert replay.returncode == 0 and f"job {job_id}: done" in replay.stdout
    assert "step 16/16" in replay.stderr
    unknown = _gradwire("jobs", "watch", "j-nope", "--server", address)
    assert_one_line_error(unknown, "j-nope")


def _interrupt_train(args, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "gradwire", *map(str, args)], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # "job ID on ADDRESS": the job runs
        assert first.startswith("job "), first + proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + stdout, stderr)


def test_ctrl_c_says_the_job_keeps_running_and_how_to_reattach(files, served, tmp_path):
    address, _ = served
    out = _interrupt_train(_train(files, "--server", address, "--epochs", "500", "--batch-size", "4"), tmp_path)
    job_id = out.stdout.split("job ", 1)[1].split()[0]
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert "keeps running" in out.stderr and f"gradwire jobs watch {job_id} --server {address}" in out.stderr
    listing = _gradwire("jobs", "list", "--server", address)
    assert re.search(rf"^{job_id}\s+(running|queued)", listing.stdout, re.MULTILINE), listing.stdout
    cancelled = _gradwire("jobs", "cancel", job_id, "--server", address)
    assert cancelled.returncode == 0, cancelled.stderr


def test_ctrl_c_stops_a_server_train_started_and_says_so(files, tmp_path):
    out = _interrupt_train(_train(files, "--epochs", "500", "--batch-size", "4"), tmp_path)
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert "stopping the server this command started" in out.stderr and "jobs watch" not in out.stderr
