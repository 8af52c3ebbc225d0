"""Server settings: defaults, ``GRADWIRE_*`` environment variables, then command-line flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

from .admission import physical_memory
from .job_store import default_job_dir
from ..worker.codec import DEFAULT_CHUNK_BYTES
from ..worker.validate import Limits


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 50051
    tls_cert: str = ""  # PEM certificate chain: serve TLS (with tls_key)
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: mutual TLS, clients must present a certificate it signed
    metrics_port: int = 0  # serve Prometheus metrics over HTTP on this port (of host); 0: off
    insecure: bool = False  # silence the warning about serving a non-loopback address without TLS and tokens
    backend: str = "local"  # local | ray
    workers: int = 2  # Ray actors (and CPUs of a Ray cluster started here)
    worker_cpus: float = 1.0  # CPUs each Ray actor reserves
    blas_threads: int = 1  # BLAS threads per Ray actor
    ray_address: str = ""  # "" starts a local Ray on loopback; "auto" or host:port joins one
    # micro-shards per request unless the request says otherwise; 0: the backend's default
    # (ray: 8, to spread over workers; local: 1, as gw.local(), which it then matches bitwise)
    shards: int = 0
    max_message_bytes: int = 64 << 20  # per gRPC message, both directions
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # tensor bytes per streamed message
    max_request_bytes: int = 8 << 30  # tensor bytes per request
    max_nodes: int = 100_000
    max_tensor_elements: int = 2**31  # per input, parameter or intermediate
    max_concurrent: int = 8  # computations in flight (requests and job steps); more requests get RESOURCE_EXHAUSTED
    idle_timeout: float = 30.0  # seconds a request stream may send nothing before it is ended
    memory_budget: int = 0  # bytes shared by all requests and uploads; 0: half the machine's memory
    max_request_memory: int = 0  # estimated peak bytes of one run; 0: a quarter of the machine's memory
    max_request_flops: float = 1e15  # estimated floating-point operations of one run
    max_running_jobs: int = 4  # training jobs running at once; more wait queued
    max_job_steps: int = 10_000_000  # steps one training job may ask for
    dataset_read_timeout: float = 60.0  # seconds a job's dataset may take to read at submission
    max_graphs: int = 256  # registered graphs kept (least recently used evicted)
    max_sessions: int = 256
    # a file of "TOKEN TENANT" lines: every call but health checks needs "authorization: Bearer
    # TOKEN", and what a tenant makes only it can see; re-read on SIGHUP. "": no tokens, one tenant
    auth_tokens: str = ""
    check_finite: bool = False  # reject NaN/Inf produced by any node
    grace_seconds: float = 30.0  # on SIGTERM, how long in-flight calls may finish
    max_retries: int = 3  # per shard, when a worker dies (Ray backend)
    # where a Ray backend runs a computation: auto (by cost: too small to gain from the workers
    # runs in this process, with the same bits), ray or local; a request or job may say otherwise
    placement: str = "auto"
    pipeline_depth: int = 2  # shards queued per Ray worker at once
    keep_freed_memory: bool = True  # glibc: reuse freed buffers rather than fault in fresh pages
    # folders a job's data_path may name files in (os.pathsep-separated; `--data-root DIR`,
    # repeatable); none: path datasets are off, data must be uploaded
    data_roots: str = ""
    job_dir: str = default_job_dir()  # job data and checkpoints: per user; one server per folder
    keep_finished: int = 100  # finished jobs kept (the oldest beyond are removed)

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget or physical_memory() // 2

    @property
    def max_request_memory_bytes(self) -> int:
        return self.max_request_memory or physical_memory() // 4

    @property
    def limits(self) -> Limits:
        return Limits(max_nodes=self.max_nodes, max_tensor_elements=self.max_tensor_elements)

    @classmethod
    def from_env(cls, environ=os.environ, **overrides) -> "ServerConfig":
        """Defaults, overridden by GRADWIRE_<FIELD> variables, overridden by ``overrides``."""
        values = {}
        for f in fields(cls):
            raw = environ.get("GRADWIRE_" + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "ServerConfig":
        return dataclasses.replace(self, **changes)


def _parse(kind: str, raw: str, name: str):
    try:
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"GRADWIRE_{name.upper()}={raw!r} is not a valid {kind}") from None
