"""Transport security of the front door: TLS (and mutual TLS) from PEM files, and the warning
for a server that leaves loopback without it. gRPC's own credentials do the cryptography."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

log = logging.getLogger("gradwire.server")


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """TLS credentials for ``--tls-cert``/``--tls-key`` (None when neither is given); with
    ``client_ca``, clients must present a certificate it signed (mutual TLS)."""
    if not cert and not key:
        if client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    root = _read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([(_read(key, "--tls-key"), _read(cert, "--tls-cert"))],
                                       root_certificates=root, require_client_auth=root is not None)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path!r}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def warn_if_exposed(host: str, tls: bool, tokens: bool, insecure: bool) -> str | None:
    """The warning for a server reachable beyond this machine without TLS and tokens."""
    if is_loopback(host) or insecure or (tls and tokens):
        return None
    missing = " and ".join(name for name, on in (("TLS (--tls-cert/--tls-key)", tls),
                                                 ("authentication (--auth-tokens)", tokens)) if not on)
    message = (f"serving {host} without {missing}: anyone who can reach this address can "
               f"{'read and alter traffic, ' if not tls else ''}submit computations"
               f"{', and see and cancel every job' if not tokens else ''}; --insecure silences this warning")
    log.warning(message)
    return message
