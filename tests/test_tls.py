"""TLS and mutual TLS at the front door, with certificates made at test time (trustme)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.security import is_loopback, warn_if_exposed

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and an
    unrelated CA, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    files = {}
    for name, blob in (("ca", ca.cert_pem), ("other_ca", other.cert_pem), ("server_cert", server.cert_chain_pems[0]),
                       ("server_key", server.private_key_pem), ("client_cert", client.cert_chain_pems[0]),
                       ("client_key", client.private_key_pem)):
        path = folder / f"{name}.pem"
        blob.write_to_path(str(path))
        files[name] = str(path)
    return files


def _graph():
    g = gw.Graph()
    x, w = g.input("x", (None, 3)), g.param("w", (3,))
    g.set_loss(gw.sum(gw.tanh(x * w)), batch_reduction="sum")
    return g, {"w": np.array([0.5, -1.0, 2.0], np.float32)}, {"x": np.ones((4, 3), np.float32)}


def _expected():
    return gw.local().value_and_grad(*_graph())


def test_tls_round_trip_and_a_session(start_server, pki):
    _, address = start_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with gw.connect(address, ca=pki["ca"], timeout=10) as client:
        loss, grads = client.value_and_grad(*_graph())
        g, params, batch = _graph()
        session = client.session(g, params)
        assert session.value_and_grad(batch)[0] == loss
    want_loss, want_grads = _expected()
    assert loss == want_loss and np.array_equal(grads["w"], want_grads["w"])


def test_a_client_that_does_not_trust_the_server_gets_a_clear_error(start_server, pki):
    _, address = start_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with gw.connect(address, ca=pki["other_ca"], timeout=3, max_attempts=2) as client:
        with pytest.raises(gw.Unavailable, match="TLS to 127.0.0.1") as err:
            client.ops()
    assert "other_ca.pem" in str(err.value)


def test_plaintext_to_a_tls_server_and_tls_to_a_plaintext_one_fail(start_server, pki):
    _, secure = start_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with gw.connect(secure, timeout=3, max_attempts=2) as client:
        with pytest.raises(gw.Unavailable, match="without TLS"):
            client.ops()
    _, plain = start_server()
    with gw.connect(plain, ca=pki["ca"], timeout=3, max_attempts=2) as client:
        with pytest.raises(gw.Unavailable):
            client.ops()


def test_mutual_tls_wants_a_client_certificate(start_server, pki):
    _, address = start_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    with gw.connect(address, ca=pki["ca"], timeout=3, max_attempts=2) as client:
        with pytest.raises(gw.Unavailable):
            client.ops()  # no client certificate: refused in the handshake
    with gw.connect(address, ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"], timeout=10) as client:
        assert client.value_and_grad(*_graph())[0] == _expected()[0]


def test_a_half_configured_tls_refuses_to_start(start_server, pki):
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        start_server(tls_cert=pki["server_cert"])
    with pytest.raises(ValueError, match="--tls-client-ca needs"):
        start_server(tls_client_ca=pki["ca"])


def test_leaving_loopback_without_tls_and_tokens_warns(caplog):
    caplog.set_level(logging.WARNING, logger="gradwire.server")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert warn_if_exposed("127.0.0.1", tls=False, tokens=False, insecure=False) is None
    message = warn_if_exposed("0.0.0.0", tls=False, tokens=False, insecure=False)
    assert "without TLS" in message and "authentication" in message and "--insecure" in message
    assert "see and cancel every job" in caplog.text
    assert "authentication" in warn_if_exposed("0.0.0.0", tls=True, tokens=False, insecure=False)
    assert warn_if_exposed("0.0.0.0", tls=True, tokens=True, insecure=False) is None
    assert warn_if_exposed("0.0.0.0", tls=False, tokens=False, insecure=True) is None


def test_serve_offers_the_tls_flags():
    from gradwire.cli.serve import build_parser

    text = build_parser().format_help()
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--insecure"):
        assert flag in text


def test_a_ray_cluster_gradwire_starts_uses_token_auth_explicitly():
    from gradwire.server.ray_backend import use_token_auth

    env = {}
    assert use_token_auth(env) == "token" and env == {"RAY_AUTH_MODE": "token"}
    chosen = {"RAY_AUTH_MODE": "disabled"}  # the user's choice stands
    assert use_token_auth(chosen) == "disabled"


def test_a_session_and_a_job_through_tls_and_tokens(start_server, pki, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t0k3n-alice alice\nt0k3n-bob bob\n")
    _, address = start_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"], auth_tokens=str(tokens))
    g, params, batch = _graph()
    data = {"x": np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)}
    with gw.connect(address, ca=pki["ca"], token="t0k3n-alice", timeout=20) as alice:
        session = alice.session(g, params)
        assert session.value_and_grad(batch)[0] == _expected()[0]
        job = alice.submit_job(g, params, data, gw.optim.SGD(lr=0.01), batch_size=10, epochs=2)
        final = job.result()
        assert final["w"].shape == (3,) and [j["job_id"] for j in alice.jobs()] == [job.job_id]
    with gw.connect(address, ca=pki["ca"], token="t0k3n-bob", timeout=20) as bob:
        assert bob.jobs() == []  # alice's job is hers
        with pytest.raises(gw.NotFound):
            bob.job(job.job_id).result()
    with gw.connect(address, ca=pki["ca"], timeout=5, max_attempts=1) as anonymous:
        with pytest.raises(gw.Unauthenticated):
            anonymous.ops()
