"""Prometheus metrics: a real server's /metrics endpoint, scraped over HTTP on 127.0.0.1,
moves with real calls."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

import gradwire as gw

pytest.importorskip("prometheus_client")


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _graph():
    g = gw.Graph()
    x, w = g.input("x", (None, 3)), g.param("w", (3,))
    g.set_loss(gw.sum(gw.tanh(x * w)), batch_reduction="sum")
    return g, {"w": np.ones(3, np.float32)}, {"x": np.ones((8, 3), np.float32)}


def test_counters_move_with_real_calls(free_port, start_server):
    port = free_port()
    server, address = start_server(metrics_port=port, shards=2)
    assert server.metrics_port == port
    before = _scrape(port)
    assert before.get('gradwire_sessions', 0) == 0
    with gw.connect(address) as client:
        for _ in range(3):
            client.value_and_grad(*_graph())
        with pytest.raises(gw.NotFound):
            client.job("j-nope").cancel()
        g, params, batch = _graph()
        session = client.session(g, params)
        session.value_and_grad(batch)
        data = {"x": np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)}
        client.submit_job(g, params, data, gw.optim.SGD(lr=0.01), batch_size=5, epochs=2).result()
    after = _scrape(port)
    assert after['gradwire_requests_total{code="OK",method="Compute"}'] == 4  # 3 requests, 1 session step
    assert after['gradwire_requests_total{code="NOT_FOUND",method="CancelJob"}'] == 1
    assert after['gradwire_request_duration_seconds_count{method="Compute"}'] == 4
    assert after['gradwire_received_bytes_total{method="Compute"}'] > 3 * 96
    assert after['gradwire_sent_bytes_total{method="Compute"}'] > 0
    assert after['gradwire_shards_total{placement="local"}'] == 3 * 2 + 2 + 8 * 2  # requests, session, job steps
    assert after["gradwire_sessions"] == 1 and after["gradwire_graphs"] >= 1
    assert after['gradwire_jobs{state="done"}'] == 1
    assert after["gradwire_workers_replaced_total"] == 0


def test_metrics_are_off_by_default(start_server):
    server, _ = start_server()
    assert server.metrics is None
