"""Authentication and tenants: bearer tokens from a file (``--auth-tokens``), checked by a
``grpc.aio`` server interceptor before any handler runs.

The file holds one ``TOKEN TENANT`` pair per line; blank lines and lines starting with ``#``
are ignored. Every call but the gRPC health service must carry ``authorization: Bearer
TOKEN`` metadata naming a token of the file; others end UNAUTHENTICATED before a handler
(or a request deserializer) runs. The tenant a token names owns what its calls make (graphs,
sessions, jobs, uploaded data); the servicer asks ``Authenticator.tenant_of`` once per call.
Without a token file everything belongs to ``DEFAULT_TENANT`` and no interceptor is installed.

Tokens are kept only as SHA-256 digests and compared with ``hmac.compare_digest`` against
every entry, without an early exit, so neither the comparison nor the lookup reveals by its
time which bytes of a guess were right. No token, nor a line of the file, is ever logged or
put into an error message. ``reload`` (SIGHUP) re-reads the file; a file that does not parse
leaves the previous table in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from .status import Unauthenticated

log = logging.getLogger("gradwire.server")

DEFAULT_TENANT = "default"  # the owner of everything when tokens are off (and of jobs from before tenants)
# calls that need no token: load balancers and orchestrators probe health without credentials
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_TENANT = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII without spaces: what an HTTP/2 header value can carry
_SCHEME = "bearer "


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and line, never a token."""


def _digest(token: str | bytes) -> bytes:
    raw = token if isinstance(token, bytes) else token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True)
class TokenTable:
    """Token digests and their tenants."""

    entries: tuple[tuple[bytes, str], ...]

    def lookup(self, token: str | bytes | None) -> str | None:
        """The tenant of ``token`` (None: unknown). Compares against every entry, in constant
        time each, with no early exit."""
        if token is None:
            return None
        presented = _digest(token)
        found = None
        for digest, tenant in self.entries:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    @property
    def tenants(self) -> set[str]:
        return {tenant for _, tenant in self.entries}


def parse_tokens(text: str, source: str = "the token file") -> TokenTable:
    """``TOKEN TENANT`` lines; ``TokenFileError`` naming the first bad line by number only."""
    entries: list[tuple[bytes, str]] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise TokenFileError(f"{where}: expected 'TOKEN TENANT' (two fields), got {len(fields)} field(s)")
        token, tenant = fields
        if not _TOKEN.fullmatch(token):
            raise TokenFileError(f"{where}: the token must be printable ASCII without spaces")
        if not _TENANT.fullmatch(tenant):
            raise TokenFileError(f"{where}: the tenant must be 1-64 letters, digits or '_.:@-'")
        digest = _digest(token)
        if digest in seen:
            raise TokenFileError(f"{where}: the same token as line {seen[digest]}")
        seen[digest] = number
        entries.append((digest, tenant))
    if not entries:
        raise TokenFileError(f"{source} holds no 'TOKEN TENANT' line: no caller could authenticate")
    return TokenTable(tuple(entries))


def load_tokens(path: str) -> TokenTable:
    source = f"--auth-tokens file {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokenFileError(f"cannot read {source}: {reason}") from None
    return parse_tokens(text, source)


def bearer_token(metadata: Iterable | None) -> str | None:
    """The token of the call's one ``authorization: Bearer TOKEN`` entry (None: absent,
    repeated, or another scheme)."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0].strip()
    if value[:len(_SCHEME)].lower() != _SCHEME:
        return None
    return value[len(_SCHEME):].strip() or None


class Authenticator:
    """The token table of a server (or none: every caller is ``DEFAULT_TENANT``)."""

    def __init__(self, path: str = ""):
        self.path = path
        self._table: TokenTable | None = load_tokens(path) if path else None
        self._reload_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._table is not None

    def check(self, metadata) -> str | None:
        """The caller's tenant, or None if the call carries no known token."""
        table = self._table  # one read: a reload swaps the whole table
        if table is None:
            return DEFAULT_TENANT
        return table.lookup(bearer_token(metadata))

    def tenant_of(self, metadata) -> str:
        """The caller's tenant; ``Unauthenticated`` when tokens are on and the call has no known one."""
        tenant = self.check(metadata)
        if tenant is None:
            raise Unauthenticated(rejection(metadata))
        return tenant

    def reload(self) -> bool:
        """Re-read the token file. A file that cannot be read or parsed keeps the tokens in
        force and logs why; True when the new table is in force."""
        if not self.path:
            log.info("auth: no --auth-tokens file to reload")
            return False
        with self._reload_lock:
            try:
                table = load_tokens(self.path)
            except TokenFileError as exc:
                log.error("auth: reload refused, the previous tokens stay in force: %s", exc)
                return False
            self._table = table
        log.info("auth: reloaded %d token(s) of %d tenant(s) from %r", len(table.entries), len(table.tenants),
                 self.path)
        return True


def rejection(metadata) -> str:
    """Why a call is refused, without repeating anything it sent."""
    if not any(key == "authorization" for key, _ in (metadata or ())):
        return ("this server requires authentication: send 'authorization: Bearer TOKEN' metadata "
                "(gw.connect(address, token=...) or GRADWIRE_TOKEN)")
    return "the authorization token is not valid on this server"


# (client streaming, server streaming) -> the handler factory of that kind
_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler, (True, False): grpc.stream_unary_rpc_method_handler,
          (False, True): grpc.unary_stream_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def method_kinds(*services) -> dict[str, tuple[bool, bool]]:
    """``/package.Service/Method`` -> (client streaming, server streaming), from service descriptors."""
    return {f"/{s.full_name}/{m.name}": (m.client_streaming, m.server_streaming) for s in services for m in s.methods}


def _rejecting_handler(kind: tuple[bool, bool], method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind that reads nothing and ends the call UNAUTHENTICATED."""
    async def abort(context):
        log.info("method=%s peer=%s status=UNAUTHENTICATED", method.rsplit("/", 1)[-1], context.peer())
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if kind[1]:
        async def reject_stream(_request, context):
            await abort(context)
            yield  # pragma: no cover - abort raises; this makes the handler a response stream
        return _KINDS[kind](reject_stream)

    async def reject(_request, context):
        await abort(context)
    return _KINDS[kind](reject)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets through calls with a known token (and health checks); answers every other call
    UNAUTHENTICATED with a handler of its method's kind."""

    def __init__(self, authenticator: Authenticator, kinds: dict[str, tuple[bool, bool]]):
        self.auth, self.kinds = authenticator, kinds

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if method.startswith(OPEN_PREFIXES) or self.auth.check(metadata) is not None:
            return await continuation(handler_call_details)
        kind = self.kinds.get(method)
        if kind is None:  # a service not described to us: the kind its own handler declares
            handler = await continuation(handler_call_details)
            kind = (False, False) if handler is None else (handler.request_streaming, handler.response_streaming)
        return _rejecting_handler(kind, method, rejection(metadata))
