"""Authentication and tenants against real servers: bearer tokens from --auth-tokens, checked
before any handler runs, for every RPC of the service descriptor (a new RPC is covered at
once); health stays open, reflection does not; what one tenant makes (graphs, sessions, jobs)
is NOT_FOUND for another with the message of an id that does not exist; the token file is
re-read on SIGHUP; tokens never reach a log line."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.auth import DEFAULT_TENANT, Authenticator, TokenFileError, parse_tokens
from gradwire.worker.codec import graph_to_proto, tensor_chunks

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SERVICE = pb.DESCRIPTOR.services_by_name["Gradwire"]
METHODS = [m.name for m in SERVICE.methods]
ID_FIELDS = ("graph_id", "session_id", "job_id")

ALICE, BOB, CAROL = (f"{name}-{secrets.token_hex(16)}" for name in ("alice", "bob", "carol"))
ALL_TOKENS = (ALICE, BOB, CAROL)


def _token_file(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("auth")
    return _token_file(folder / "tokens", "# the test's tenants", "", f"{ALICE} alice", f"  {BOB}\tbob  ")


@pytest.fixture(scope="module")
def server(start_server, tokens, tmp_path_factory):
    """One server with tokens for alice and bob (its own job folder)."""
    return start_server(auth_tokens=tokens, shards=2, job_dir=str(tmp_path_factory.mktemp("jobs")))


@pytest.fixture(scope="module")
def address(server):
    return server[1]


def _bearer(token: str | None) -> tuple:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def _call(address: str, method: str, request=None, token: str | None = None, metadata=None, timeout: float = 15):
    """``(code, details, first response)`` of one call through a raw stub, with a minimal
    valid request of the method's input type unless one is given (a stream method sends it as
    a one-message stream; of a streamed answer only the first message is read)."""
    m = SERVICE.methods_by_name[method]
    request = getattr(pb, m.input_type.name)() if request is None else request
    metadata = _bearer(token) if metadata is None else metadata
    with grpc.insecure_channel(address) as channel:
        rpc = getattr(pb_grpc.GradwireStub(channel), method)
        try:
            response = rpc(iter([request]) if m.client_streaming else request, timeout=timeout, metadata=metadata)
            if m.server_streaming:
                first = next(response, None)
                response.cancel()
                return OK, "", first
            return OK, "", response
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None


# ---------------------------------------------------------------- the example graph and job


def _graph(loss_op=gw.tanh) -> gw.Graph:
    g = gw.Graph()
    x, w = g.input("x", (None, 3)), g.param("w", (3,))
    g.set_loss(gw.sum(loss_op(x * w)), batch_reduction="sum")
    return g


W = np.array([0.5, -1.0, 2.0], np.float32)
X = (np.arange(30, dtype=np.float32).reshape(10, 3) / 10)


def _chunk(name, array) -> pb.TensorChunk:
    return next(tensor_chunks(name, np.asarray(array), 1 << 30))


def _long_job(graph: pb.Graph) -> pb.JobRequest:
    """A job that runs for minutes unless cancelled (batch 1, many epochs)."""
    header = pb.JobHeader(graph=graph, optimizer_json='{"name": "sgd", "lr": 0.001}', batch_size=1, epochs=100_000)
    return pb.JobRequest(header=header, params=[_chunk("w", W)], data=[_chunk("x", X)])


def _wait_state(address: str, token: str, job_id: str, states: tuple[str, ...], timeout: float = 30) -> pb.JobInfo:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code, _, listed = _call(address, "ListJobs", token=token)
        assert code == OK
        info = next((j for j in listed.jobs if j.job_id == job_id), None)
        if info is not None and info.state in states:
            return info
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {states}")


# ---------------------------------------------------------------- every RPC needs a token


@pytest.mark.parametrize("method", METHODS)
def test_every_rpc_needs_a_known_token(address, method):
    for metadata in ((), _bearer("not-a-token"), _bearer(ALICE + "x"), _bearer(ALICE[:-1]),
                     (("authorization", f"Basic {ALICE}"),), (("authorization", "Bearer"),),
                     (("authorization", f"Bearer {ALICE}"), ("authorization", f"Bearer {BOB}"))):
        code, details, _ = _call(address, method, metadata=metadata)
        assert code == UNAUTHENTICATED, (method, metadata, code, details)
        assert ALICE not in details and BOB not in details
    code, details, _ = _call(address, method, token=ALICE)  # the same minimal request, with a token
    assert code != UNAUTHENTICATED, (method, details)


def test_the_scheme_is_case_insensitive(address):
    assert _call(address, "ListOps", metadata=(("authorization", f"bearer {BOB}"),))[0] == OK


def test_health_needs_no_token(address):
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE.full_name):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def _list_services(address: str, metadata) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10, metadata=metadata)
        return [s.name for r in responses for s in r.list_services_response.service]


def test_reflection_needs_a_token(address):
    with pytest.raises(grpc.RpcError) as err:
        _list_services(address, ())
    assert err.value.code() == UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        _list_services(address, _bearer("wrong"))
    assert err.value.code() == UNAUTHENTICATED
    assert SERVICE.full_name in _list_services(address, _bearer(ALICE))


def test_a_server_without_tokens_is_open_as_before(start_server, tmp_path):
    _, open_address = start_server(job_dir=str(tmp_path / "jobs"))
    assert _call(open_address, "ListOps")[0] == OK
    assert _call(open_address, "ListOps", token="anything")[0] == OK  # a token is ignored
    assert SERVICE.full_name in _list_services(open_address, ())


# ---------------------------------------------------------------- tenants


def _id_fields(descriptor, prefix=(), depth=0):
    """Paths to the string fields named graph_id, session_id or job_id of a message type (and of
    its non-repeated message fields), so a new RPC that takes an id is covered at once."""
    for f in descriptor.fields:
        if f.name in ID_FIELDS and f.type == f.TYPE_STRING:
            yield (*prefix, f.name)
        elif f.message_type is not None and depth < 2 and not _repeated(f):
            yield from _id_fields(f.message_type, (*prefix, f.name), depth + 1)


def _repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _with_id(method: str, path: tuple[str, ...], value: str):
    message = getattr(pb, SERVICE.methods_by_name[method].input_type.name)()
    target = message
    for name in path[:-1]:
        target = getattr(target, name)
    setattr(target, path[-1], value)
    return message


ID_PROBES = [(m.name, path) for m in SERVICE.methods for path in _id_fields(m.input_type)]


def _unknown_like(real: str) -> str:
    """An id of the same form that names nothing."""
    return real[:2] + secrets.token_hex((len(real) - 2) // 2)


def test_probes_cover_every_method_taking_an_id():
    methods = {m for m, _ in ID_PROBES}
    assert {"Compute", "ValueAndGrad", "CreateSession", "UpdateSession", "GetSessionParams", "CloseSession",
            "SubmitJob", "WatchJob", "GetJobResult", "CancelJob"} <= methods


def test_another_tenants_ids_are_not_found_like_unknown_ids(address):
    """Alice registers a graph, opens a session and starts a job; Bob, naming each id in every
    method and field that takes such an id, gets exactly what an id that does not exist gets."""
    graph = graph_to_proto(_graph().graph_def)
    code, _, registered = _call(address, "RegisterGraph", pb.RegisterGraphRequest(graph=graph), token=ALICE)
    assert code == OK
    code, _, session = _call(address, "CreateSession", pb.SessionRequest(
        header=pb.SessionHeader(graph_id=registered.graph_id), params=[_chunk("w", W)]), token=ALICE)
    assert code == OK
    code, _, job = _call(address, "SubmitJob", _long_job(graph), token=ALICE)
    assert code == OK
    _wait_state(address, ALICE, job.job_id, ("running",))
    alices = {"graph_id": registered.graph_id, "session_id": session.session_id, "job_id": job.job_id}

    outcomes = {}
    for method, path in ID_PROBES:
        real = alices[path[-1]]
        unknown = _unknown_like(real)
        code, details, _ = _call(address, method, _with_id(method, path, real), token=BOB)
        want_code, want_details, _ = _call(address, method, _with_id(method, path, unknown), token=BOB)
        assert (code, details.replace(real, "<id>")) == (want_code, want_details.replace(unknown, "<id>")), \
            (method, path)
        outcomes[method, path] = code
        # and alice's own call finds it (the calls that would end her session or job: below)
        if method not in ("CancelJob", "CloseSession") and code == NOT_FOUND:
            mine = _call(address, method, _with_id(method, path, real), token=ALICE)
            assert mine[0] != NOT_FOUND or real not in mine[1], (method, path, mine)
    # CreateSession reads no session id (a session is made, not named); every other probe is a lookup
    assert {p for p, c in outcomes.items() if c != NOT_FOUND} == {("CreateSession", ("header", "session_id"))}

    # bob's CloseSession and CancelJob changed nothing of alice's
    assert _call(address, "GetSessionParams", pb.SessionRef(session_id=session.session_id), token=ALICE)[0] == OK
    assert _wait_state(address, ALICE, job.job_id, ("running",)).state == "running"
    assert _call(address, "CloseSession", pb.SessionRef(session_id=session.session_id), token=ALICE)[0] == OK
    assert _call(address, "CancelJob", pb.JobRef(job_id=job.job_id), token=ALICE)[0] == OK
    _wait_state(address, ALICE, job.job_id, ("cancelled",))


def test_a_graph_registered_by_both_tenants_is_both_of_theirs(address):
    graph = graph_to_proto(_graph(gw.sigmoid).graph_def)
    request = pb.ComputeRequest(params=[_chunk("w", W)], batch=[_chunk("x", X)])
    code, _, mine = _call(address, "RegisterGraph", pb.RegisterGraphRequest(graph=graph), token=ALICE)
    assert code == OK
    request.header.graph_id = mine.graph_id
    assert _call(address, "Compute", request, token=BOB)[0] == NOT_FOUND
    code, _, theirs = _call(address, "RegisterGraph", pb.RegisterGraphRequest(graph=graph), token=BOB)
    assert code == OK and theirs.graph_id == mine.graph_id
    for token in (ALICE, BOB):
        code, details, answer = _call(address, "Compute", request, token=token)
        assert code == OK, details


def test_list_jobs_shows_ones_own_only(address):
    with gw.connect(address, token=ALICE) as alice, gw.connect(address, token=BOB) as bob:
        g = _graph()
        mine = [alice.submit_job(g, {"w": W}, {"x": X}, gw.optim.SGD(lr=0.1), batch_size=5, name=f"a{i}")
                for i in range(2)]
        theirs = bob.submit_job(g, {"w": W}, {"x": X}, gw.optim.SGD(lr=0.1), batch_size=5, name="b")
        for job in (*mine, theirs):
            job.wait()
        alices = {j["job_id"] for j in alice.jobs()}
        bobs = {j["job_id"] for j in bob.jobs()}
    assert {j.job_id for j in mine} <= alices and theirs.job_id not in alices
    assert theirs.job_id in bobs and not bobs & alices


def test_ids_carry_128_random_bits(address):
    with gw.connect(address, token=ALICE) as client:
        session = client.session(_graph(), {"w": W})
        job = client.submit_job(_graph(), {"w": W}, {"x": X}, gw.optim.SGD(lr=0.1), batch_size=5)
        job.wait()
    assert re.fullmatch(r"s-[0-9a-f]{32}", session.session_id)
    assert re.fullmatch(r"j-[0-9a-f]{32}", job.job_id)


def test_a_restarted_server_keeps_job_ownership(start_server, tokens, tmp_path):
    job_dir = tmp_path / "jobs"
    server, first = start_server(auth_tokens=tokens, job_dir=str(job_dir))
    with gw.connect(first, token=ALICE) as alice:
        job = alice.submit_job(_graph(), {"w": W}, {"x": X}, gw.optim.SGD(lr=0.1), batch_size=5, epochs=2)
        trained = job.result()
    server.stop(0)
    assert json.loads((job_dir / job.job_id / "job.json").read_text())["tenant"] == "alice"
    # a job from before tenants: its job.json names none, so it is the default tenant's
    old_id = "j-" + "0" * 16
    shutil.copytree(job_dir / job.job_id, job_dir / old_id)
    spec = json.loads((job_dir / old_id / "job.json").read_text())
    del spec["tenant"]
    spec["job_id"] = old_id
    (job_dir / old_id / "job.json").write_text(json.dumps(spec))

    with_default = _token_file(tmp_path / "tokens", f"{ALICE} alice", f"{BOB} bob", f"{CAROL} {DEFAULT_TENANT}")
    _, again = start_server(auth_tokens=with_default, job_dir=str(job_dir))
    with gw.connect(again, token=ALICE) as alice, gw.connect(again, token=BOB) as bob, \
            gw.connect(again, token=CAROL) as default:
        assert {j["job_id"] for j in alice.jobs()} == {job.job_id}
        assert bob.jobs() == []
        assert {j["job_id"] for j in default.jobs()} == {old_id}
        restored = alice.job(job.job_id).result()
        assert all(np.array_equal(restored[k], trained[k]) for k in trained)
        with pytest.raises(gw.NotFound, match="unknown job id"):
            bob.job(job.job_id).result()


# ---------------------------------------------------------------- the token file


@pytest.mark.parametrize("lines,says", [
    ([f"{ALICE}"], "line 1: expected 'TOKEN TENANT' (two fields), got 1"),
    (["# comment", f"{ALICE} alice", f"{BOB} bob extra"], "line 3: expected 'TOKEN TENANT' (two fields), got 3"),
    (["", f"{ALICE} al/ice"], "line 2: the tenant must be"),
    ([f"{ALICE} alice", f"{ALICE} bob"], "line 2: the same token as line 1"),
    (["# nothing but comments", ""], "holds no 'TOKEN TENANT' line"),
])
def test_a_malformed_token_file_refuses_to_start(start_server, tmp_path, lines, says):
    path = _token_file(tmp_path / "tokens", *lines)
    with pytest.raises(TokenFileError, match=re.escape(says)) as err:
        start_server(auth_tokens=path, job_dir=str(tmp_path / "jobs"))
    assert path in str(err.value)
    assert not any(token in str(err.value) for token in ALL_TOKENS)


def test_a_missing_token_file_refuses_to_start(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read --auth-tokens file .*No such file"):
        Authenticator(str(tmp_path / "missing"))


def test_the_table_compares_every_token():
    table = parse_tokens(f"{ALICE} alice\n{BOB} bob\n")
    assert table.lookup(ALICE) == "alice" and table.lookup(BOB) == "bob"
    assert table.lookup(None) is None and table.lookup("") is None and table.lookup(ALICE.upper()) is None
    assert all(len(digest) == 32 and ALICE.encode() not in digest for digest, _ in table.entries)  # digests only


def test_reload_swaps_tokens_and_keeps_the_old_ones_when_the_file_is_bad(start_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "tokens"
    _token_file(path, f"{ALICE} alice", f"{BOB} bob")
    server, address = start_server(auth_tokens=str(path), job_dir=str(tmp_path / "jobs"))
    with gw.connect(address, token=ALICE) as alice:
        session = alice.session(_graph(), {"w": W})

    _token_file(path, f"{CAROL} alice", f"{BOB} bob")  # alice's token rotated: her things stay hers
    assert server.reload_auth() is True
    assert _call(address, "ListOps", token=ALICE)[0] == UNAUTHENTICATED
    assert _call(address, "GetSessionParams", pb.SessionRef(session_id=session.session_id), token=CAROL)[0] == OK
    assert _call(address, "GetSessionParams", pb.SessionRef(session_id=session.session_id), token=BOB)[0] == NOT_FOUND

    _token_file(path, f"{ALICE} alice", f"{BOB}")  # line 2 is malformed: nothing changes
    assert server.reload_auth() is False
    assert _call(address, "ListOps", token=CAROL)[0] == OK
    assert _call(address, "ListOps", token=ALICE)[0] == UNAUTHENTICATED
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 1 and "line 2" in refused[0]
    path.unlink()  # a file gone: the same
    assert server.reload_auth() is False
    assert _call(address, "ListOps", token=CAROL)[0] == OK
    assert not any(token in caplog.text for token in ALL_TOKENS)


def test_tokens_never_reach_the_log(address, server, caplog):
    caplog.set_level(logging.DEBUG)
    with gw.connect(address, token=ALICE) as client:
        client.value_and_grad(_graph(), {"w": W}, {"x": X})
        session = client.session(_graph(), {"w": W})
        session.value_and_grad({"x": X})
        session.close()
    for token in (None, BOB + "0", "Bearer " + ALICE):
        _call(address, "ListOps", token=token)
    _call(address, "Compute", pb.ComputeRequest(header=pb.ComputeHeader(graph_id="g-nothing")), token=BOB)
    server[0].reload_auth()
    text = caplog.text
    assert "method=ValueAndGrad" in text or "method=Compute" in text  # the log was captured
    assert "tenant=alice" in text and "status=UNAUTHENTICATED" in text
    assert not any(token in text for token in ALL_TOKENS)


# ---------------------------------------------------------------- the SDK


def test_sdk_job_and_session_with_a_token(address):
    g = _graph()
    want_loss, want_grads = gw.local(shards=2).value_and_grad(g, {"w": W}, {"x": X})  # the server's plan
    with gw.connect(address, token=BOB) as client:
        loss, grads = client.value_and_grad(g, {"w": W}, {"x": X})
        session = client.session(g, {"w": W})
        assert session.value_and_grad({"x": X})[0] == loss
        session.update({"w": W * 2})
        assert np.array_equal(session.params()["w"], W * 2)
        session.close()
        job = client.submit_job(g, {"w": W}, {"x": X}, gw.optim.Adam(lr=1e-2), batch_size=5, epochs=3)
        events = list(job.watch())
        trained = job.result()
        assert job.info()["state"] == "done"
    assert loss == want_loss and np.array_equal(grads["w"], want_grads["w"])
    assert events[-1].state == "done" and trained["w"].shape == W.shape


def test_sdk_token_from_the_environment(address, monkeypatch):
    monkeypatch.setenv("GRADWIRE_TOKEN", ALICE)
    with gw.connect(address) as client:
        assert client.ops()
    with gw.connect(address, token="") as client, pytest.raises(gw.Unauthenticated, match="requires authentication"):
        client.ops()  # an explicit empty token sends none


def test_sdk_unauthenticated_error(address, monkeypatch):
    monkeypatch.delenv("GRADWIRE_TOKEN", raising=False)
    assert issubclass(gw.Unauthenticated, gw.GradwireError) and "Unauthenticated" in gw.__all__
    with gw.connect(address) as client, pytest.raises(gw.Unauthenticated) as err:
        client.value_and_grad(_graph(), {"w": W}, {"x": X})
    assert err.value.code == UNAUTHENTICATED and "gw.connect(address, token=" in str(err.value)
    with gw.connect(address, token="wrong") as client, pytest.raises(gw.Unauthenticated, match="not valid"):
        client.jobs()
    with pytest.raises(ValueError, match="printable ASCII") as err:
        gw.connect(address, token="two words")
    assert "two words" not in str(err.value)


# ---------------------------------------------------------------- SIGHUP in a server process


def _until(predicate, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sighup_reloads_the_token_file_of_a_serving_process(wait_healthy, free_port, tmp_path):
    path = tmp_path / "tokens"
    _token_file(path, f"{ALICE} alice")
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_file = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gradwire", "serve", "--port", str(port), "--job-dir",
                                 str(tmp_path / "jobs"), "--auth-tokens", str(path), "--grace-seconds", "0"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(address, proc)
        assert _call(address, "ListOps", token=ALICE)[0] == OK
        assert _call(address, "ListOps", token=BOB)[0] == UNAUTHENTICATED
        _token_file(path, f"{BOB} bob")
        proc.send_signal(signal.SIGHUP)
        assert _until(lambda: _call(address, "ListOps", token=BOB)[0] == OK)
        assert _call(address, "ListOps", token=ALICE)[0] == UNAUTHENTICATED
        _token_file(path, f"{CAROL} carol", "oops")
        proc.send_signal(signal.SIGHUP)
        assert _until(lambda: "reload refused" in log_file.read_text())
        assert _call(address, "ListOps", token=BOB)[0] == OK and _call(address, "ListOps", token=CAROL)[0] \
            == UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log_file.read_text()
    assert "line 2" in text and "reloaded 1 token(s)" in text
    assert not any(token in text for token in ALL_TOKENS)


def test_serve_refuses_a_malformed_token_file(tmp_path):
    path = _token_file(tmp_path / "tokens", "# tokens", f"{ALICE} alice", f"{BOB}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    done = subprocess.run([sys.executable, "-m", "gradwire", "serve", "--port", "0", "--job-dir", str(tmp_path / "j"),
                           "--auth-tokens", path], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "line 3" in done.stderr and path in done.stderr
    assert not any(token in done.stderr + done.stdout for token in ALL_TOKENS)
