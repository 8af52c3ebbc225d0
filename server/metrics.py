"""Prometheus metrics of one server (``--metrics-port N``), served over HTTP by prometheus_client.

Each server has its own registry (several servers may share a process, as in tests). Counters
move where the work happens: requests, their latency and bytes in the servicer's one logging
and (de)serializing places, shards where a computation's outcome comes back; gauges of what the
server holds (sessions, graphs, jobs by state, each running job's step time and rate) are read
at scrape time from the stores themselves.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("gradwire_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=registry)
        self.latency = Histogram("gradwire_request_duration_seconds", "RPC latency, by method", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.received = Counter("gradwire_received_bytes", "request bytes received, by method", ["method"],
                                registry=registry)
        self.sent = Counter("gradwire_sent_bytes", "response bytes sent, by method", ["method"], registry=registry)
        self.shards = Counter("gradwire_shards", "micro-shards computed, by where they ran", ["placement"],
                              registry=registry)
        self.retries = Counter("gradwire_shard_retries", "shard attempts beyond the first (lost workers)",
                               registry=registry)
        self._http = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def observe_outcome(self, outcome) -> None:
        placement = outcome.placement.where if outcome.placement is not None else "local"
        self.shards.labels(placement).inc(len(outcome.shards))
        retries = sum(max(0, r.attempts - 1) for r in outcome.shards if r is not None)
        if retries:
            self.retries.inc(retries)

    def watch(self, sessions, graphs, jobs, backend) -> None:
        """Gauges read from the stores at scrape time."""
        Gauge("gradwire_sessions", "sessions held", registry=self.registry).set_function(lambda: len(sessions))
        Gauge("gradwire_graphs", "registered graphs held", registry=self.registry).set_function(lambda: len(graphs))
        self.registry.register(_Collected(jobs, backend))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (0: any free port); the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _Collected:
    """Jobs by state, each running job's step time and rate, workers replaced: read at scrape."""

    def __init__(self, jobs, backend):
        self.jobs, self.backend = jobs, backend

    def collect(self):
        states = GaugeMetricFamily("gradwire_jobs", "training jobs, by state", labels=["state"])
        rate = GaugeMetricFamily("gradwire_job_examples_per_second", "a running job's training rate", labels=["job"])
        step = GaugeMetricFamily("gradwire_job_step_seconds", "a running job's mean step time", labels=["job"])
        counts: dict[str, int] = {}
        for run in self.jobs.all_runs():
            counts[run.state] = counts.get(run.state, 0) + 1
            last = next((e for e in reversed(run.events) if e.get("state") == "running"
                         and e.get("examples_per_s")), None)
            if run.state == "running" and last is not None:
                rate.add_metric([run.spec.job_id], last["examples_per_s"])
                step.add_metric([run.spec.job_id], run.spec.batch_size / last["examples_per_s"])
        for state in ("queued", "running", "done", "failed", "cancelled"):
            states.add_metric([state], counts.get(state, 0))
        replaced = CounterMetricFamily("gradwire_workers_replaced", "Ray workers replaced after they died")
        replaced.add_metric([], getattr(self.backend, "replaced", 0))
        yield from (states, rate, step, replaced)
