"""Building, running and stopping the coordinator server."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradwire.protos import gradwire_pb2 as pb
from gradwire.server.backend import Backend, LocalBackend
from gradwire.server.config import ServerConfig
from gradwire.server.servicer import GradwireServicer
from gradwire.worker import frames

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


def add_servicer(servicer: GradwireServicer, server: grpc.Server) -> None:
    """The generated ``add_GradwireServicer_to_server``, but with the zero-copy tensor
    (de)serializers of ``frames`` (same bytes on the wire)."""
    service = pb.DESCRIPTOR.services_by_name["Gradwire"]
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (True, False): grpc.stream_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {
        m.name: kinds[m.client_streaming, m.server_streaming](
            getattr(servicer, m.name), request_deserializer=frames.lenient_decoder(getattr(pb, m.input_type.name)),
            response_serializer=frames.serialize)
        for m in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def make_backend(config: ServerConfig) -> Backend:
    if config.backend == "local":
        return LocalBackend()
    if config.backend == "ray":
        from gradwire.server.ray_backend import RayBackend
        return RayBackend(config)
    raise ValueError(f"unknown backend {config.backend!r}; expected 'local' or 'ray'")


class GradwireServer:
    """A running coordinator: the gRPC server, its health service and its backend."""

    def __init__(self, config: ServerConfig, backend: Backend | None = None):
        self.config = config
        if config.keep_freed_memory:
            keep_freed_memory()
        self.backend = backend or make_backend(config)
        self.servicer = GradwireServicer(config, self.backend)
        # room beyond max_concurrent so health checks and cheap calls are always answered
        self._pool = futures.ThreadPoolExecutor(max_workers=config.max_concurrent + 8,
                                                thread_name_prefix="gradwire-rpc")
        self.grpc_server = grpc.server(self._pool, options=channel_options(config.max_message_bytes))
        add_servicer(self.servicer, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server)
        self.port = self.grpc_server.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")
        self._stopped = threading.Event()

    def start(self) -> "GradwireServer":
        self.servicer.jobs.resume_all()
        self.grpc_server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("gradwire serving on %s:%d (backend=%s)", self.config.host, self.port, self.backend.name)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Health flips to NOT_SERVING first; then new calls are refused and calls in
        flight get ``grace`` seconds to finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.servicer.jobs.stop()  # jobs pause at a step boundary (checkpoints resume them); watchers end
        self.grpc_server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.backend.close()
        self._pool.shutdown(wait=False)

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
