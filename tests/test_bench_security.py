"""Smoke test of the security benchmark: both rows come out (no timing is judged here)."""

from __future__ import annotations

import pytest

from gradwire.bench.registry import Config

pytest.importorskip("trustme")


def test_security_rows(monkeypatch):
    from gradwire.bench.workloads_security import security

    monkeypatch.setenv("GRADWIRE_BENCH_SECURITY_REPEATS", "3")
    rows = security(Config(repeats=3, warmup=1, quick=True, log=lambda msg: None))
    assert [r["name"] for r in rows] == ["security/plain (own process)", "security/tls+tokens (own process)"]
    assert rows[1]["ratio"] > 0 and rows[1]["target"] == "<= 1.3"
