"""Ray processes listen on loopback only (issue 4): every listening TCP socket owned by the
shared test cluster's processes, or by a server's Ray backend, is bound to 127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (from /proc/net)."""
    out = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints the address as native-endian 32-bit words
                raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
                out[int(fields[9])] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback
    return (mapped or ip).is_loopback


def _ray_processes() -> dict[int, str]:
    """pid -> command line of this machine's Ray processes (raylets, GCS, workers, agents)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmd and int(pid) != os.getpid():
            found[int(pid)] = cmd
    return found


def _sockets_of(pid: int, listening: dict[int, tuple[str, int]]) -> list[tuple[str, int]]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    out = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in listening:
                out.append(listening[inode])
    return out


def test_loopback_classification():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


def test_ray_listens_on_loopback_only(ray_cluster, tmp_path):
    server, port = create_server(ServerConfig(port=0, backend="ray", ray_address=ray_cluster.address, workers=2,
                                              placement="ray", job_dir=str(tmp_path),
                                              worker_cpus=0.5))
    try:
        with gw.connect(f"127.0.0.1:{port}") as client:  # make sure workers are up and serving
            g = gw.Graph()
            w = g.param("w", (3,))
            g.set_loss(gw.sum(w * w))
            client.value_and_grad(g, {"w": np.ones(3, np.float32)}, {})
        listening = _listening()
        bound = {(pid, addr, p) for pid in _ray_processes() for addr, p in _sockets_of(pid, listening)}
        assert bound, "found no listening Ray sockets to check"
        outside = sorted(b for b in bound if not _is_loopback(b[1]))
        assert not outside, f"Ray processes listening beyond loopback: {outside}"
    finally:
        server.stop(0)
