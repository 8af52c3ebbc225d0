"""What the front door's locks cost: the small-request latency through TLS and bearer tokens
against the same server without them, both in processes of their own, measured interleaved.
Target (issue 12): <= 1.3x. Certificates are made at run time (trustme, the test extra)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from pathlib import Path

from .registry import Config, Row, row, workload
from .timing import summarize
from .workloads_service import paired_ratio, scaled_repeats, scaled_warmup, seed_graph, \
    subprocess_server, timed

TLS_TOKENS_TARGET = 1.3


@contextlib.contextmanager
def _credentials():
    """(folder, CA path, server cert path, server key path, token file, token), removed after."""
    import trustme

    folder = Path(tempfile.mkdtemp(prefix="gradwire-bench-tls-"))
    try:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        cert.private_key_pem.write_to_path(str(folder / "key.pem"))
        token = secrets.token_hex(16)
        (folder / "tokens").write_text(f"{token} bench\n")
        yield folder, token
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@workload("security")
def security(cfg: Config) -> list[Row]:
    import gradwire as gw

    try:
        import trustme  # noqa: F401
    except ImportError:
        return [row("security/tls+tokens vs plain", notes="unavailable: trustme is not installed (pip install trustme)")]
    g, params, batch = seed_graph()
    repeats = scaled_repeats(cfg, "security", 300, floor=20)
    with contextlib.ExitStack() as stack:
        folder, token = stack.enter_context(_credentials())
        secure = {"ca": str(folder / "ca.pem"), "token": token}
        plain = stack.enter_context(subprocess_server())
        locked = stack.enter_context(subprocess_server(
            connect=secure, tls_cert=folder / "cert.pem", tls_key=folder / "key.pem", auth_tokens=folder / "tokens"))
        plain_client = stack.enter_context(gw.connect(plain))
        locked_client = stack.enter_context(gw.connect(locked, **secure))
        variants = {
            "plain": lambda: plain_client.value_and_grad(g, params, batch),
            "tls+tokens": lambda: locked_client.value_and_grad(g, params, batch),
        }
        samples = timed(variants, repeats, scaled_warmup(cfg))
    ratio = paired_ratio(samples["tls+tokens"], samples["plain"])
    return [
        row("security/plain (own process)", stats=summarize(samples["plain"]), notes="baseline: same request, no TLS, no tokens"),
        row("security/tls+tokens (own process)", stats=summarize(samples["tls+tokens"]), ratio=ratio,
            target=TLS_TOKENS_TARGET, notes="p50 ratio over interleaved rounds; seed graph, batch 8"),
    ]
