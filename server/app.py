"""Building, running and stopping the coordinator server."""

from __future__ import annotations

import asyncio
import os
import logging
import signal
import threading

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from ..protos import gradwire_pb2 as pb
from .admission import Admission
from .auth import AuthInterceptor, Authenticator, method_kinds
from .backend import Backend, LocalBackend
from .config import ServerConfig
from .jobs import JobManager
from .security import server_credentials, warn_if_exposed
from .servicer import GradwireServicer
from .store import GraphStore, SessionStore
from ..worker import frames

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gradwire"].full_name
log = logging.getLogger("gradwire.server")


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC's 4 MiB default is far too small for tensors: both ends raise it alike."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MiB from its heap and keep freed memory instead of
    returning it to the OS. Message buffers of a few MiB are allocated and freed on every
    request; fresh pages from the OS cost a page fault each on first touch, which made
    copies into new buffers 2-3x slower than into reused ones. False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def add_servicer(servicer: GradwireServicer, server) -> None:
    """The generated ``add_GradwireServicer_to_server``, but with the zero-copy tensor
    (de)serializers of ``frames`` (same bytes on the wire)."""
    service = pb.DESCRIPTOR.services_by_name["Gradwire"]
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (True, False): grpc.stream_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {
        m.name: kinds[m.client_streaming, m.server_streaming](
            getattr(servicer, m.name), request_deserializer=_counted_in(servicer.metrics, m.name, frames.lenient_decoder(
                getattr(pb, m.input_type.name))), response_serializer=_counted_out(servicer.metrics, m.name))
        for m in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _metrics():
    try:
        from .metrics import Metrics
    except ImportError:
        raise ValueError("--metrics-port needs prometheus_client: pip install 'gradwire[metrics]'") from None
    return Metrics()


def _counted_in(metrics, method: str, decode):
    if metrics is None:
        return decode
    received = metrics.received.labels(method)

    def deserialize(data: bytes):
        received.inc(len(data))
        return decode(data)
    return deserialize


def _counted_out(metrics, method: str):
    if metrics is None:
        return frames.serialize
    sent = metrics.sent.labels(method)

    def serialize(message) -> bytes:
        data = frames.serialize(message)
        sent.inc(len(data))
        return data
    return serialize


def make_backend(config: ServerConfig) -> Backend:
    if config.backend == "local":
        return LocalBackend()
    if config.backend == "ray":
        from .ray_backend import RayBackend
        return RayBackend(config)
    raise ValueError(f"unknown backend {config.backend!r}; expected 'local' or 'ray'")


class GradwireServer:
    """A running coordinator: the ``grpc.aio`` server on an event loop of its own thread, its
    health service, its stores, job manager and backend. Blocking callers (tests, the CLI)
    drive it through ``start``/``stop``/``wait``."""

    def __init__(self, config: ServerConfig, backend: Backend | None = None):
        self.config = config
        self.auth = Authenticator(config.auth_tokens)  # a bad token file refuses to start, before anything runs
        if config.keep_freed_memory:
            keep_freed_memory()
        self.backend = backend or make_backend(config)
        self.admission = Admission(config.max_concurrent, config.memory_budget_bytes)
        graphs = GraphStore(config.limits, config.max_graphs)
        jobs = JobManager(config.job_dir, self.backend, graphs, config.shards or self.backend.default_shards,
                          config.check_finite, self.admission, config.max_running_jobs, config.max_job_steps,
                          tuple(root for root in config.data_roots.split(os.pathsep) if root), config.keep_finished)
        jobs.shards_by_cost = not config.shards  # the server's --shards, when given, is every job's plan
        sessions = SessionStore(config.max_sessions)
        self.metrics = _metrics() if config.metrics_port else None
        if self.metrics is not None:
            self.metrics.watch(sessions, graphs, jobs, self.backend)
            jobs.observe = self.metrics.observe_outcome
        self.servicer = GradwireServicer(config, self.backend, graphs, sessions, jobs, self.admission, auth=self.auth,
                                         metrics=self.metrics)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gradwire-loop", daemon=True)
        self._thread.start()
        self._stopped = threading.Event()
        try:
            self.port = self._on_loop(self._build())
        except BaseException:
            self._close_loop()
            raise

    def _on_loop(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _build(self) -> int:
        self.grpc_server = grpc.aio.server(options=channel_options(self.config.max_message_bytes),
                                           interceptors=self._interceptors())
        add_servicer(self.servicer, self.grpc_server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server)
        config = self.config
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        address = f"{config.host}:{config.port}"
        port = self.grpc_server.add_insecure_port(address) if credentials is None else \
            self.grpc_server.add_secure_port(address, credentials)
        warn_if_exposed(config.host, credentials is not None, bool(getattr(config, "auth_tokens", "")),
                        config.insecure)
        if port == 0:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        return port

    def _interceptors(self) -> list[AuthInterceptor] | None:
        """With tokens, one that refuses every call but health checks without a known token
        (reflection included); without, none (no cost per call)."""
        if not self.auth.enabled:
            return None
        return [AuthInterceptor(self.auth, method_kinds(pb.DESCRIPTOR.services_by_name["Gradwire"],
                                                        *reflection_pb2.DESCRIPTOR.services_by_name.values()))]

    def reload_auth(self) -> bool:
        """Re-read the token file (SIGHUP); one that does not parse keeps the tokens in force."""
        return self.auth.reload()

    async def _start(self) -> None:
        await self.grpc_server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> "GradwireServer":
        if self.metrics is not None:  # first: once health says SERVING, everything is up
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
        self._on_loop(self._start())
        # health answers at once; unfinished jobs resume meanwhile (each from its checkpoint)
        self._resuming = threading.Thread(target=self.servicer.jobs.resume_all, name="gradwire-resume", daemon=True)
        self._resuming.start()
        log.info("gradwire serving on %s:%d (backend=%s)", self.config.host, self.port, self.backend.name)
        return self

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._loop.run_in_executor(None, self._stop_jobs)  # jobs pause at a step; watchers end
        await self.grpc_server.stop(grace)

    def _stop_jobs(self) -> None:
        resuming = getattr(self, "_resuming", None)
        if resuming is not None:
            resuming.join(timeout=30)
        self.servicer.jobs.stop()

    def stop(self, grace: float | None = None) -> None:
        """Health flips to NOT_SERVING first; then new calls are refused and calls in
        flight get ``grace`` seconds to finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self._on_loop(self._stop(self.config.grace_seconds if grace is None else grace))
        finally:
            self.servicer.close()
            if self.metrics is not None:
                self.metrics.close()
            self.backend.close()
            self._close_loop()

    def _close_loop(self) -> None:
        try:  # the loop's default executor ran _stop_jobs: its thread would outlive the server
            self._on_loop(self._loop.shutdown_default_executor(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def wait(self) -> None:
        self._stopped.wait()


def create_server(config: ServerConfig | None = None, backend: Backend | None = None) -> tuple[GradwireServer, int]:
    """A started server and its port (bind port 0 to let the OS choose)."""
    server = GradwireServer(config or ServerConfig(), backend).start()
    return server, server.port


def serve_forever(config: ServerConfig) -> None:
    server, _ = create_server(config)
    done = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: draining (grace %.0fs)", signum, config.grace_seconds)
        threading.Thread(target=lambda: (server.stop(), done.set()), daemon=True).start()

    def on_hangup(_signum, _frame):
        threading.Thread(target=server.reload_auth, name="gradwire-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    done.wait()
