"""A job's data_path reads only regular .npz/.npy files inside the configured data roots, and
every refusal reads the same, whether or not the file exists."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gradwire as gw


def _model():
    g = gw.Graph()
    x, y = g.input("x", (None, 4)), g.input("y", (None,), "int64")
    g.set_loss(gw.softmax_cross_entropy(x @ g.param("w", (4, 3)), y))
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((40, 4)).astype(np.float32), "y": rng.integers(0, 3, 40).astype(np.int64)}
    return g, {"w": np.zeros((4, 3), np.float32)}, data


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A data root with a good dataset, a subfolder and escapes; a secret outside it."""
    base = tmp_path_factory.mktemp("roots")
    root, outside = base / "root", base / "outside"
    root.mkdir(), outside.mkdir()
    g, params, data = _model()
    np.savez(root / "good.npz", **data)
    np.savez(outside / "secret.npz", **data)
    (root / "sub").mkdir()
    os.symlink(outside / "secret.npz", root / "link.npz")  # a symlink out of the root
    os.symlink(root / "good.npz", root / "sub" / "alias.npz")  # a symlink that stays inside
    os.mkfifo(root / "fifo.npz")
    (root / "folder.npz").mkdir()
    (root / "notes.txt").write_text("not a dataset")
    return base, root, outside


@pytest.fixture(scope="module")
def served(start_server, layout):
    _, root, _ = layout
    return start_server(data_roots=str(root))


@pytest.fixture(scope="module")
def address(served):
    return served[1]


def _submit(address, path):
    g, params, _ = _model()
    with gw.connect(address, timeout=10) as client:
        return client.submit_job(g, params, str(path), gw.optim.SGD(lr=0.1), batch_size=10, epochs=1).result()


def test_files_inside_the_root_are_read(address, layout):
    _, root, _ = layout
    first = _submit(address, root / "good.npz")
    assert np.array_equal(first["w"], _submit(address, root / "sub" / "alias.npz")["w"])


def _escapes(layout, job_dir):
    base, root, outside = layout
    return {
        "dotdot": root / ".." / "outside" / "secret.npz",
        "absolute-outside": outside / "secret.npz",
        "symlink-out": root / "link.npz",
        "etc-passwd": "/etc/passwd",
        "fifo": root / "fifo.npz",
        "directory": root / "folder.npz",
        "missing": root / "missing.npz",
        "missing-outside": outside / "missing.npz",
        "not-npz": root / "notes.txt",
        "the-root-itself": root / "sub",
        "another-jobs-upload": job_dir,
    }


def test_every_escape_is_refused_alike(served, layout):
    server, address = served
    g, params, data = _model()
    with gw.connect(address, timeout=10) as client:
        uploaded = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=10, epochs=1)
        uploaded.result()
    upload = server.servicer.jobs.root / uploaded.job_id / "data" / "x.npy"
    messages = {}
    for name, path in _escapes(layout, upload).items():
        with pytest.raises(gw.PermissionDenied) as err:
            _submit(address, path)
        messages[name] = err.value.message.replace(repr(str(path)), "PATH")
    assert len(set(messages.values())) == 1, messages  # nothing tells what exists
    assert "data roots" in next(iter(messages.values()))


def test_path_datasets_are_off_without_roots(start_server, layout):
    _, root, _ = layout
    _, address = start_server()
    with pytest.raises(gw.PermissionDenied, match="no --data-root"):
        _submit(address, root / "good.npz")


def test_the_cli_takes_repeated_data_roots():
    from gradwire.cli.serve import build_parser

    args = build_parser().parse_args(["--data-root", "/a", "--data-root", "/b"])
    assert args.data_roots == ["/a", "/b"]
