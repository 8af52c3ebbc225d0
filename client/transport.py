"""The SDK's transport: the only place that calls gRPC stubs and catches ``grpc.RpcError``.

UNAVAILABLE is retried with exponential backoff while the deadline allows; nothing else
is retried (an INVALID_ARGUMENT request would fail the same way again).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
import time
from collections.abc import Callable, Iterator

import grpc

from .errors import DeadlineExceeded, GradwireError, from_status
from ..protos import gradwire_pb2 as pb
from ..worker import frames

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class TlsOptions:
    """The client side of TLS: a CA bundle to trust (None: the system's roots) and, for mutual
    TLS, this client's certificate chain and key. All paths to PEM files."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert= and key=")
        read = lambda path: None if path is None else Path(path).read_bytes()  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))
_SERVICE = pb.DESCRIPTOR.services_by_name["Gradwire"]
TOKEN_ENV = "GRADWIRE_TOKEN"


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization`` metadata of a bearer token (None: ``$GRADWIRE_TOKEN``; none or
    empty: no metadata). Error messages never repeat the token."""
    token = (os.environ.get(TOKEN_ENV, "") if token is None else token).strip()
    if not token:
        return ()
    if not all("!" <= ch <= "~" for ch in token):
        raise ValueError("a gradwire token must be printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


class Transport:
    def __init__(self, address: str, timeout: float | None = 30.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_attempts: int = 5, backoff: float = 0.1, tls: "TlsOptions | None" = None,
                 token: str | None = None):
        self.address, self.timeout = address, timeout
        self._auth = auth_metadata(token)  # sent with every call
        self.max_attempts, self.backoff = max_attempts, backoff
        self.tls = tls
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(address, options=options) if tls is None else \
            grpc.secure_channel(address, tls.credentials(), options=options)
        self.bytes_sent = 0  # serialized request bytes, all calls (attempts included)
        self.bytes_received = 0
        self._calls = {name: self._multicallable(method) for name, method in _SERVICE.methods_by_name.items()}

    def close(self) -> None:
        self.channel.close()

    def _multicallable(self, method):
        """A call whose (de)serializers move tensor bytes without protobuf's copies
        (``frames``) and count the bytes that really cross the wire."""
        response_cls = getattr(pb, method.output_type.name)
        kind = {(False, False): self.channel.unary_unary, (True, False): self.channel.stream_unary,
                (False, True): self.channel.unary_stream, (True, True): self.channel.stream_stream}
        return kind[method.client_streaming, method.server_streaming](
            f"/{_SERVICE.full_name}/{method.name}", request_serializer=self._serialize,
            response_deserializer=lambda data: self._deserialize(response_cls, data))

    def _serialize(self, message) -> bytes:
        data = frames.serialize(message)
        self.bytes_sent += len(data)
        return data

    def _deserialize(self, cls, data: bytes):
        self.bytes_received += len(data)
        return frames.decode(cls, data)

    def call(self, method: str, request: Callable[[], object], *, stream_in: bool = False,
             stream_out: bool = False, timeout: float | None = None):
        """Call ``method``. ``request()`` builds the request (or its message iterator) anew
        for every attempt. A streamed response is returned as an iterator once its first
        message arrived (only failures before that are retried), so callers can assemble
        large tensors as they stream in rather than after the whole response."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata = (("gradwire-request-id", os.urandom(6).hex()), *self._auth)
        rpc = self._calls[method]
        for attempt in range(1, self.max_attempts + 1):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"{method}: deadline of {timeout}s passed before the call completed")
            try:
                response = rpc(request(), timeout=remaining, metadata=metadata)
                if not stream_out:
                    return response
                first = next(response, None)  # the server has finished its work once this arrives
                return self._rest(method, first, response)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code != grpc.StatusCode.UNAVAILABLE or attempt == self.max_attempts:
                    raise from_status(code, f"{method}: {details}{self._hint(code)}") from None
                pause = min(self.backoff * 2 ** (attempt - 1), 2.0) * (0.5 + random.random() / 2)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise from_status(code, f"{method}: {details} (no time left to retry){self._hint(code)}") from None
                time.sleep(pause)
        raise GradwireError(f"{method}: unreachable")  # pragma: no cover

    def _hint(self, code: grpc.StatusCode) -> str:
        if code != grpc.StatusCode.UNAVAILABLE:
            return ""
        if self.tls is None:
            return f"; is a gradwire server listening on {self.address} without TLS?"
        return (f"; TLS to {self.address}: is the server's certificate signed by "
                f"{'the CA ' + repr(self.tls.ca) if self.tls.ca else 'a system-trusted CA'} and issued for that "
                "name, and does the server want a client certificate (cert=, key=)?")

    def _rest(self, method: str, first, response) -> Iterator:
        try:
            if first is not None:
                yield first
            yield from response
        except grpc.RpcError as exc:
            raise from_status(exc.code(), f"{method}: {exc.details() or ''}") from None

    def stream(self, method: str, request) -> Iterator:
        """A server-streaming call's messages as they arrive (no retry: callers resume)."""
        try:
            yield from self._calls[method](request, timeout=None, metadata=self._auth)
        except grpc.RpcError as exc:
            raise from_status(exc.code(), f"{method}: {exc.details() or ''}") from None
