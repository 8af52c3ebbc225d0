"""Service workloads: a real gradwire server on 127.0.0.1 against bare gRPC and ``gw.local()``.

* ``latency``    (issue 3a) the seed's tiny graph end to end, p50/p99, against a bare gRPC
                 echo of a same-sized payload on a server with the same options. Info rows:
                 a bare stream-stream echo (ValueAndGrad's call shape), requests with
                 shards=1, the server in its own process (``gradwire serve``), and the
                 floor of the stack: the SDK, and a bare stub, against a handler that
                 only runs the engine.
* ``server_mlp`` (issue 3b) the core MLP step through the server (local backend, session:
                 only the batch ships), shards=1 and the default 8, against ``gw.local()``;
                 plus the bare-gRPC transfer time of the same batch bytes as a floor.
* ``transfer``   (issue 3c) a 256 MiB parameter up and its 256 MiB gradient down through
                 gradwire against bare gRPC streaming of the same bytes (info row: the
                 server in its own process, so client and server do not share a GIL).

Also the helpers the Ray and training workloads share: ``gradwire_server`` (a server on
loopback, port 0, a throw-away job directory, always stopped), ``subprocess_server`` (the
same as a child process), ``BareGrpc`` (echo, sink and source handlers on raw bytes with
the server's channel options), ``timed`` (``timing.interleaved`` with the collector's
existing objects frozen) and ``scaled_repeats``.

Repeat counts: a workload's sample count is its own default scaled by ``--repeats / 24``
(so ``--repeats 12`` halves every workload, ``--quick``'s 3 gives about an eighth), never
below a small floor; ``GRADWIRE_BENCH_<NAME>_REPEATS=N`` sets one workload's count exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .registry import Config, Row, row, workload
from .timing import interleaved, median, summarize

DEFAULT_REPEATS = 24  # the CLI's default --repeats; workloads scale their own defaults by it
CHUNK = 4 << 20  # bytes per streamed message, as the SDK and the server use


# ---------------------------------------------------------------- shared helpers


def scaled_repeats(cfg: Config, name: str, default: int, floor: int = 2) -> int:
    """``default`` scaled by ``cfg.repeats / 24``; ``GRADWIRE_BENCH_<NAME>_REPEATS`` overrides."""
    env = os.environ.get(f"GRADWIRE_BENCH_{name.upper()}_REPEATS")
    if env:
        return max(1, int(env))
    return max(floor, round(default * cfg.repeats / DEFAULT_REPEATS))


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """``gc.freeze()`` for the duration: ``interleaved`` runs ``gc.collect()`` after every
    round, and once torch is imported (the mlp workload) a full collection takes ~100 ms,
    which would make a 400-round latency run last a minute. Objects that existed before
    are left out of those collections; everything created while timing is still collected."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def timed(variants, repeats: int, warmup: int) -> dict[str, list[float]]:
    """``timing.interleaved`` under ``frozen_gc``."""
    with frozen_gc():
        return interleaved(variants, repeats=repeats, warmup=warmup)


def scaled_warmup(cfg: Config) -> int:
    return max(1, cfg.warmup)


@contextlib.contextmanager
def gradwire_server(**config: Any) -> Iterator[tuple[Any, str]]:
    """A started server on 127.0.0.1 (port 0) with ``ServerConfig(**config)`` and its own
    temporary job directory (so it never resumes another run's jobs); always stopped (which
    also shuts down a Ray it started itself), and the directory removed."""
    from ..server.app import create_server
    from ..server.config import ServerConfig

    job_dir = tempfile.mkdtemp(prefix="gradwire-bench-jobs-")
    server = None
    try:
        server, port = create_server(ServerConfig(**{"host": "127.0.0.1", "port": 0, "job_dir": job_dir, **config}))
        yield server, f"127.0.0.1:{port}"
    finally:
        if server is not None:
            server.stop(0)
        shutil.rmtree(job_dir, ignore_errors=True)


@contextlib.contextmanager
def subprocess_server(connect: dict | None = None, **config: Any) -> Iterator[str]:
    """``python -m gradwire serve`` in a child process on 127.0.0.1 (settings passed as
    ``GRADWIRE_<FIELD>`` variables), so client and server do not share one GIL; yields its
    address once it answers (to ``gw.connect(address, **connect)``), and always ends it by its
    pid (SIGTERM, then SIGKILL)."""
    import socket
    import subprocess
    import sys

    import gradwire as gw

    job_dir = tempfile.mkdtemp(prefix="gradwire-bench-jobs-")
    with socket.socket() as sock:  # a free port (the child binds it a moment later)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADWIRE_HOST": "127.0.0.1", "GRADWIRE_PORT": str(port), "GRADWIRE_JOB_DIR": job_dir,
           "GRADWIRE_GRACE_SECONDS": "0", **{f"GRADWIRE_{k.upper()}": str(v) for k, v in config.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "gradwire", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gradwire serve exited with status {proc.returncode} before answering")
            try:
                with gw.connect(address, timeout=2.0, max_attempts=1, **(connect or {})) as probe:
                    probe.ops()
                break
            except gw.GradwireError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gradwire serve did not answer on {address} within 60s") from None
                time.sleep(0.2)
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(job_dir, ignore_errors=True)


def plain_server(service: str, handlers: dict, max_message_bytes: int, max_workers: int):
    """A started gRPC server on 127.0.0.1 (port 0) with only ``handlers`` for ``service``,
    the gradwire server's channel options and pool size: (server, its pool, port)."""
    from concurrent import futures

    import grpc

    from ..server.app import channel_options

    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bare-rpc")
    server = grpc.server(pool, options=channel_options(max_message_bytes))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, pool, port


class BareGrpc:
    """A plain gRPC server with the gradwire server's options (message limits, thread pool
    size) and three generic handlers on raw bytes (no protobuf anywhere):

    * ``Echo``   unary-unary: returns the request bytes;
    * ``EchoStream`` stream-stream: returns each request message (the call shape of
      ``ValueAndGrad``, which pays gRPC Python's per-call request-consumer thread);
    * ``Sink``   client-streaming: consumes chunks, returns the byte count (8 bytes);
    * ``Source`` server-streaming: the request is the byte count; streams that many bytes
      in ``CHUNK``-sized messages (one preallocated buffer, so nothing but gRPC is timed).
    """

    SERVICE = "gradwire.bench.Bare"

    def __init__(self, max_message_bytes: int | None = None, max_workers: int | None = None,
                 own_process: bool = False):
        """``own_process``: the server runs in a child process (like ``subprocess_server``),
        the baseline for a gradwire server in its own process."""
        import subprocess
        import sys

        import grpc

        from ..server.app import channel_options
        from ..server.config import ServerConfig

        defaults = ServerConfig()
        max_message_bytes = max_message_bytes or defaults.max_message_bytes
        max_workers = max_workers or defaults.max_concurrent + 8  # as GradwireServer sizes its pool
        self.server = self._proc = None
        if own_process:
            code = f"from gradwire.bench.workloads_service import BareGrpc; BareGrpc.serve({max_message_bytes}, {max_workers})"
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.port = int(self._proc.stdout.readline())
        else:
            self.server, self._pool, self.port = self._start(max_message_bytes, max_workers)
        # the client channel as the SDK's Transport opens it
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=channel_options(max_message_bytes))
        self.echo = self.channel.unary_unary(f"/{self.SERVICE}/Echo")
        self._echo_stream = self.channel.stream_stream(f"/{self.SERVICE}/EchoStream")
        self._sink_call = self.channel.stream_unary(f"/{self.SERVICE}/Sink")
        self._source_call = self.channel.unary_stream(f"/{self.SERVICE}/Source")

    @classmethod
    def _start(cls, max_message_bytes: int, max_workers: int):
        import grpc

        chunk = bytes(CHUNK)
        return plain_server(cls.SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "EchoStream": grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(list(requests))),
            "Sink": grpc.stream_unary_rpc_method_handler(cls._sink),
            "Source": grpc.unary_stream_rpc_method_handler(lambda request, context: cls._source(chunk, request)),
        }, max_message_bytes, max_workers)

    @classmethod
    def serve(cls, max_message_bytes: int, max_workers: int) -> None:
        """The child process of ``own_process``: print the port, serve until stdin closes."""
        import sys

        server, _, port = cls._start(max_message_bytes, max_workers)
        print(port, flush=True)
        sys.stdin.read()
        server.stop(0).wait()

    @staticmethod
    def _sink(request_iterator, context) -> bytes:
        total = 0
        for chunk in request_iterator:
            total += len(chunk)
        return total.to_bytes(8, "little")

    @staticmethod
    def _source(chunk: bytes, request: bytes):
        remaining = int.from_bytes(request, "little")
        while remaining > 0:
            n = min(remaining, len(chunk))
            yield chunk if n == len(chunk) else chunk[:n]
            remaining -= n

    def echo_stream(self, payload: bytes) -> list[bytes]:
        return list(self._echo_stream(iter((payload,))))

    def upload(self, chunks: list[bytes]) -> int:
        return int.from_bytes(self._sink_call(iter(chunks)), "little")

    def download(self, n_bytes: int) -> int:
        return sum(len(m) for m in self._source_call(n_bytes.to_bytes(8, "little")))

    def close(self) -> None:
        import subprocess

        self.channel.close()
        if self._proc is not None:  # ended by its own pid: close its stdin, then kill if it lingers
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=15)
        else:
            self.server.stop(0).wait()
            self._pool.shutdown(wait=False)

    def __enter__(self) -> "BareGrpc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def byte_chunks(arrays: list[np.ndarray], chunk: int = CHUNK) -> list[bytes]:
    """The arrays' raw bytes cut into ``chunk``-sized pieces (built once, before timing)."""
    out = []
    for a in arrays:
        raw = memoryview(np.ascontiguousarray(a)).cast("B")
        out.extend(bytes(raw[i:i + chunk]) for i in range(0, len(raw), chunk))
    return out


def phase_medians(infos: list[dict]) -> dict[str, float]:
    """Median of each phase_ms entry over calls (the server's RunInfo)."""
    keys = [k for k in ("decode", "validate", "schedule", "compute", "reduce", "encode")
            if any(k in i["phase_ms"] for i in infos)]
    keys += sorted({k for i in infos for k in i["phase_ms"]} - set(keys))
    return {k: median([i["phase_ms"].get(k, 0.0) for i in infos]) for k in keys}


def fmt_phases(phases: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.1f}" for k, v in phases.items())


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b (same round, so slow drift cancels)."""
    return median([x / y for x, y in zip(a, b)])


def ms_list(seconds: list[float]) -> list[float]:
    return [round(s * 1e3, 3) for s in seconds]


# ---------------------------------------------------------------- latency (issue 3a)

def floor_compute():
    """The floor's ``Compute`` handler, ``compute(request, context) -> ComputeResponse``: look
    up (or build) the program, read the tensors, run the engine, answer loss and gradients."""
    from ..protos import gradwire_pb2 as pb
    from ..worker.codec import Assembler, graph_from_proto, graph_id_of_proto, one_message
    from ..worker.engine import Program

    programs: dict[str, Program] = {}

    def compute(request, context):
        header = request.header
        if header.HasField("graph"):
            graph_id = graph_id_of_proto(header.graph)
            if graph_id not in programs:
                programs[graph_id] = Program(graph_from_proto(header.graph))
        else:
            graph_id = header.graph_id
        assembler = Assembler()
        assembler.add_message(request, ("params", "batch"))
        result = programs[graph_id].run(assembler.result("params"), assembler.result("batch"))
        response = one_message(pb.ComputeResponse, {}, {"grads": result.grads})
        response.summary.loss, response.summary.graph_id = result.loss, graph_id
        return response

    return compute


@contextlib.contextmanager
def floor_server() -> Iterator[str]:
    """A server of the gradwire ``Compute`` method and nothing else, doing only what a
    gradient cannot do without (``floor_compute``): look up (or build) the program, read the
    tensors, run the engine, answer loss and gradients. No validation beyond the engine's
    own, limits, run info, logging, concurrency slots or status mapping. The SDK talks to it
    unchanged, so the latency of this server is the floor of the current stack (CPython, gRPC
    Python, the NumPy engine) for a tiny request, which the real server's row can be read against."""
    import grpc

    from ..protos import gradwire_pb2 as pb
    from ..server.config import ServerConfig

    compute = floor_compute()
    config = ServerConfig()
    server, pool, port = plain_server("gradwire.v1.Gradwire", {
        "Compute": grpc.unary_unary_rpc_method_handler(compute, request_deserializer=pb.ComputeRequest.FromString,
                                                       response_serializer=pb.ComputeResponse.SerializeToString),
    }, config.max_message_bytes, config.max_concurrent + 8)  # sized as GradwireServer sizes its pool
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        pool.shutdown(wait=False)


def _raw_compute(address: str, graph, params: dict, batch: dict):
    """A call of ``Compute`` through a bare generated-message stub, on a channel with the
    SDK's options: what is left of a client without the SDK's bookkeeping."""
    import grpc

    from ..protos import gradwire_pb2 as pb
    from ..server.app import channel_options
    from ..server.config import ServerConfig
    from ..worker.codec import graph_id_of_proto, graph_to_proto, one_message

    channel = grpc.insecure_channel(address, options=channel_options(ServerConfig().max_message_bytes))
    call = channel.unary_unary("/gradwire.v1.Gradwire/Compute", request_serializer=pb.ComputeRequest.SerializeToString,
                               response_deserializer=pb.ComputeResponse.FromString)
    header = pb.ComputeHeader(graph_id=graph_id_of_proto(graph_to_proto(graph.graph_def)))
    dtypes = {name: np.asarray(value).dtype for name, value in params.items()}

    def run():
        response = call(one_message(pb.ComputeRequest, {"header": header}, {"params": params, "batch": batch}))
        grads = {c.name: np.frombuffer(c.data, dtypes[c.name]).reshape(tuple(c.shape)) for c in response.grads}
        return response.summary.loss, grads

    return run


LATENCY_TARGET = 2.0  # gradwire p50 / bare gRPC echo p50
LATENCY_CALLS = 400  # per variant at the default --repeats (the issue asks for >= 300)
LATENCY_BATCH = 8


def seed_graph(n: int = LATENCY_BATCH, seed: int = 0):
    """The seed's tiny graph: loss = sum(sigmoid(relu(x*w + b))), x:(None,3), w,b:(3,)."""
    import gradwire as gw

    rng = np.random.default_rng(seed)
    g = gw.Graph()
    x = g.input("x", shape=(None, 3))
    w, b = g.param("w", shape=(3,)), g.param("b", shape=(3,))
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(x * w + b))), batch_reduction="sum")
    params = {"w": rng.standard_normal(3).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    return g, params, {"x": rng.standard_normal((n, 3)).astype(np.float32)}


@workload("latency")
def latency(cfg: Config) -> list[Row]:
    """Tiny graph end to end through a local-backend server vs a bare gRPC echo."""
    import gradwire as gw

    calls = scaled_repeats(cfg, "latency", LATENCY_CALLS, floor=30)
    graph, params, batch = seed_graph()
    with gradwire_server() as (server, address), BareGrpc() as bare, subprocess_server() as proc_address, \
            BareGrpc(own_process=True) as bare_proc, floor_server() as floor_address, gw.connect(address) as client, \
            gw.connect(address, shards=1) as client1, gw.connect(proc_address) as client_proc, \
            gw.connect(floor_address) as client_floor:
        shards = server.config.shards
        ref_loss, ref_grads = gw.local(shards=shards).value_and_grad(graph, params, batch)
        loss, grads = client.value_and_grad(graph, params, batch)  # registers the graph: steady state after
        client1.value_and_grad(graph, params, batch)
        client_proc.value_and_grad(graph, params, batch)
        floor_same = client_floor.value_and_grad(graph, params, batch)[0] == ref_loss
        raw_floor = _raw_compute(floor_address, graph, params, batch)
        floor_same = floor_same and raw_floor()[0] == ref_loss
        same = loss == ref_loss and all(np.array_equal(grads[k], ref_grads[k]) for k in ref_grads)
        before, received = client.bytes_sent, client.transport.bytes_received
        client.value_and_grad(graph, params, batch)
        request_bytes = client.bytes_sent - before
        response_bytes = client.transport.bytes_received - received
        payload = bytes(request_bytes)
        assert len(bare.echo(payload)) == request_bytes

        variants = {
            "gradwire": lambda: client.value_and_grad(graph, params, batch),
            "gradwire_s1": lambda: client1.value_and_grad(graph, params, batch),
            "gradwire_proc": lambda: client_proc.value_and_grad(graph, params, batch),
            "floor": lambda: client_floor.value_and_grad(graph, params, batch),
            "floor_raw": raw_floor,
            "echo": lambda: bare.echo(payload),
            "echo_stream": lambda: bare.echo_stream(payload),
            "echo_proc": lambda: bare_proc.echo(payload),
        }
        cfg.log(f"[latency] seed graph, batch {LATENCY_BATCH}, {calls} calls per variant interleaved; "
                f"request {request_bytes} B, response {response_bytes} B; server shards={server.config.shards}")
        samples = timed(variants, repeats=calls, warmup=max(10, cfg.warmup))
        # where the server's time goes (one more pass, not timed by the client)
        infos = [client.value_and_grad(graph, params, batch, return_info=True)[2] for _ in range(min(calls, 100))]

    stats = {k: summarize(v) for k, v in samples.items()}
    gate = not cfg.quick
    echo = stats["echo"]

    def p(name: str) -> str:
        s = stats[name]
        return f"p50 {s['p50_ms']:.3f} ms, p99 {s['p99_ms']:.3f} ms"

    rows = [
        row("latency/grpc echo (bare)", stats=echo, ratio=1.0,
            notes=f"baseline; {p('echo')}; unary bytes echo of {request_bytes} B", payload_bytes=request_bytes,
            samples_ms=ms_list(samples["echo"])),
    ]
    s = stats["echo_stream"]
    rows.append(row("latency/grpc stream-stream echo (bare)", stats=s, ratio=s["p50_ms"] / echo["p50_ms"],
                    notes=f"info: ValueAndGrad's call shape, 1 message each way; {p('echo_stream')}",
                    samples_ms=ms_list(samples["echo_stream"])))
    s = stats["echo_proc"]
    rows.append(row("latency/grpc echo (bare, server in its own process)", stats=s, ratio=s["p50_ms"] / echo["p50_ms"],
                    notes=f"info: the baseline of the own-process row; {p('echo_proc')}",
                    samples_ms=ms_list(samples["echo_proc"])))
    s = stats["floor"]
    rows.append(row("latency/floor: SDK + a handler doing only lookup, read, engine, answer", stats=s,
                    ratio=s["p50_ms"] / echo["p50_ms"],
                    notes=f"info: what this stack (CPython, gRPC Python, the NumPy engine) costs at least; "
                          f"{p('floor')}; paired {paired_ratio(samples['floor'], samples['echo']):.2f}; "
                          f"loss==local {floor_same}",
                    samples_ms=ms_list(samples["floor"])))
    s = stats["floor_raw"]
    rows.append(row("latency/floor without the SDK: a bare stub against the same handler", stats=s,
                    ratio=s["p50_ms"] / echo["p50_ms"],
                    notes=f"info: the least a client can do (encode the tensors, call, read the gradients); "
                          f"{p('floor_raw')}; paired {paired_ratio(samples['floor_raw'], samples['echo']):.2f}",
                    samples_ms=ms_list(samples["floor_raw"])))
    for name, label, judged, base in (
            ("gradwire", f"server shards={shards}", True, "echo"), ("gradwire_s1", "request shards=1", False, "echo"),
            ("gradwire_proc", f"server in its own process, shards={shards}; vs the own-process echo", False, "echo_proc")):
        s, b = stats[name], stats[base]
        r50, r99 = s["p50_ms"] / b["p50_ms"], s["p99_ms"] / b["p99_ms"]
        notes = f"p50 ratio; {p(name)}; p99 ratio {r99:.2f}; paired {paired_ratio(samples[name], samples[base]):.2f}"
        if judged:
            notes += f"; server phase_ms medians: {fmt_phases(phase_medians(infos))}; loss==local({shards}) {same}"
        rows.append(row(f"latency/gradwire ({label})", stats=s, ratio=r50,
                        target=LATENCY_TARGET if judged else None,
                        passed=(r50 <= LATENCY_TARGET if gate else None) if judged else None,
                        notes=notes, p99_ratio=r99, request_bytes=request_bytes, response_bytes=response_bytes,
                        samples_ms=ms_list(samples[name])))
    return rows


# ---------------------------------------------------------------- server_mlp (issue 3b)

SERVER_MLP_TARGET = 1.15  # server (session) median / gw.local() median
SERVER_MLP_REPEATS = 12


@workload("server_mlp")
def server_mlp(cfg: Config) -> list[Row]:
    """The core MLP step through a local-backend server (sessions) vs gw.local()."""
    import gradwire as gw
    from .workloads_core import MLP_BATCH, MLP_QUICK_BATCH, mlp_data, mlp_graph

    n = MLP_QUICK_BATCH if cfg.quick else MLP_BATCH
    repeats = scaled_repeats(cfg, "server_mlp", SERVER_MLP_REPEATS)
    params, batch = mlp_data(n)
    graph = mlp_graph()
    local1, local8 = gw.local(), gw.local(shards=8)
    batch_bytes = sum(a.nbytes for a in batch.values())
    chunks = byte_chunks(list(batch.values()))
    infos: dict[str, list[dict]] = {"s1": [], "s8": []}
    sink_cpu: list[float] = []

    with gradwire_server(shards=1) as (_, addr1), gradwire_server() as (server8, addr8), BareGrpc() as bare, \
            gw.connect(addr1) as c1, gw.connect(addr8) as c8:
        sess1, sess8 = c1.session(graph, params), c8.session(graph, params)

        def step(sess, key):
            loss, grads, info = sess.value_and_grad(batch, return_info=True)
            infos[key].append(info)
            return loss, grads

        # correctness once: the server on a shard plan equals gw.local() on the same plan, bitwise
        ref1, ref8 = local1.value_and_grad(graph, params, batch), local8.value_and_grad(graph, params, batch)
        got1, got8 = sess1.value_and_grad(batch), sess8.value_and_grad(batch)
        same = all(a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in b[1])
                   for a, b in ((got1, ref1), (got8, ref8)))
        assert bare.upload(chunks) == batch_bytes
        variants = {
            "local": lambda: local1.value_and_grad(graph, params, batch),
            "server_s1": lambda: step(sess1, "s1"),
            "server_s8": lambda: step(sess8, "s8"),
            "local_s8": lambda: local8.value_and_grad(graph, params, batch),
            "grpc_sink": lambda: sink_cpu.append(cpu_of(bare.upload, chunks)[1]),
        }
        cfg.log(f"[server_mlp] batch={n}, {mib_str(batch_bytes)} of batch per step, {repeats} rounds "
                f"interleaved; server shards 1 and {server8.config.shards}; bitwise == gw.local: {same}")
        samples = timed(variants, repeats=repeats, warmup=scaled_warmup(cfg))

    stats = {k: summarize(v) for k, v in samples.items()}
    base = stats["local"]["median_ms"]
    gate = not cfg.quick
    ph1, ph8 = phase_medians(infos["s1"]), phase_medians(infos["s8"])
    sink_mb_s = batch_bytes / 2**20 / (stats["grpc_sink"]["median_ms"] / 1e3)
    common = {"batch": n}
    rows = [row("server_mlp/gw.local() (in-process)", stats=stats["local"], ratio=1.0,
                notes="baseline; shards=1", samples_ms=ms_list(samples["local"]), **common)]
    for key, label, ph in (("server_s1", "shards=1", ph1), ("server_s8", "shards=8 default", ph8)):
        r = stats[key]["median_ms"] / base
        extra = ""
        if key == "server_s8":
            extra = f"; vs gw.local(shards=8) {stats[key]['median_ms'] / stats['local_s8']['median_ms']:.3f}"
        rows.append(row(f"server_mlp/server session ({label})", stats=stats[key], ratio=r,
                        target=SERVER_MLP_TARGET, passed=r <= SERVER_MLP_TARGET if gate else None,
                        notes=f"vs gw.local(); paired {paired_ratio(samples[key], samples['local']):.3f}{extra}; "
                              f"phase_ms {fmt_phases(ph)}",
                        phase_ms=ph, samples_ms=ms_list(samples[key]), **common))
    rows.append(row("server_mlp/gw.local(shards=8)", stats=stats["local_s8"],
                    ratio=stats["local_s8"]["median_ms"] / base,
                    notes="info: the 8-shard plan in-process (the engine's cost of micro-shards)",
                    samples_ms=ms_list(samples["local_s8"]), **common))
    rows.append(row("server_mlp/bare gRPC sink of batch bytes", stats=stats["grpc_sink"],
                    ratio=stats["grpc_sink"]["median_ms"] / base,
                    notes=f"floor for the transfer: {mib_str(batch_bytes)} client-streamed in 4 MiB chunks, "
                          f"{sink_mb_s:.0f} MiB/s, {median(sink_cpu) * 1e3:.0f} ms of CPU (client and server); "
                          f"ratio is of gw.local()'s step",
                    samples_ms=ms_list(samples["grpc_sink"]), **common))
    return rows


def cpu_of(fn, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the CPU seconds this process spent in it (every thread)."""
    cpu = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - cpu


def mib_str(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


# ---------------------------------------------------------------- transfer (issue 3c)

TRANSFER_TARGET = 0.5  # gradwire throughput / bare gRPC throughput, at least
TRANSFER_BYTES = 256 << 20
TRANSFER_QUICK_BYTES = 16 << 20
TRANSFER_REPEATS = 9  # rounds: the medians of 5 swung by +-15% on this VM


@workload("transfer")
def transfer(cfg: Config) -> list[Row]:
    """256 MiB parameter up + 256 MiB gradient down through gradwire vs bare gRPC streams."""
    import gradwire as gw

    size = TRANSFER_QUICK_BYTES if cfg.quick else TRANSFER_BYTES
    repeats = scaled_repeats(cfg, "transfer", TRANSFER_REPEATS)
    n = size // 4
    g = gw.Graph()
    W = g.param("W", shape=(n,))
    g.set_loss(gw.sum(W * 2.0))  # cheap: one multiply and a sum; the gradient is 2 everywhere
    params = {"W": np.full(n, 0.5, np.float32)}
    upload = byte_chunks([params["W"]])
    infos: list[dict] = []

    proc_infos: list[dict] = []
    with gradwire_server() as (_, address), BareGrpc() as bare, subprocess_server() as proc_address, \
            BareGrpc(own_process=True) as bare_proc, gw.connect(address) as client, \
            gw.connect(proc_address) as client_proc:
        def run_gradwire():
            loss, grads, info = client.value_and_grad(g, params, {}, return_info=True)
            infos.append(info)
            return grads

        def run_gradwire_proc():
            loss, grads, info = client_proc.value_and_grad(g, params, {}, return_info=True)
            proc_infos.append(info)
            return grads

        def run_bare():
            return bare.upload(upload) + bare.download(size)

        def run_bare_proc():
            return bare_proc.upload(upload) + bare_proc.download(size)

        grads = run_gradwire()
        ok = grads["W"].shape == (n,) and bool(np.all(grads["W"] == 2.0))
        del grads
        assert run_bare() == 2 * size
        cfg.log(f"[transfer] {mib_str(size)} up + {mib_str(size)} down per call, {repeats} rounds interleaved; "
                f"gradient correct: {ok}")
        samples = timed({"gradwire": run_gradwire, "bare": run_bare, "gradwire_proc": run_gradwire_proc,
                         "bare_proc": run_bare_proc}, repeats=repeats, warmup=1)
    del upload

    stats = {k: summarize(v) for k, v in samples.items()}
    moved = 2 * size / 2**20

    def mb_s(name: str) -> float:
        return moved / (stats[name]["median_ms"] / 1e3)

    ratio = mb_s("gradwire") / mb_s("bare")
    ph = phase_medians(infos)
    gate = not cfg.quick
    return [
        row("transfer/bare gRPC stream up+down", stats=stats["bare"], ratio=1.0,
            notes=f"baseline; {mb_s('bare'):.0f} MiB/s ({mib_str(size)} client-streamed + {mib_str(size)} "
                  f"server-streamed, 4 MiB messages)", mib_per_s=mb_s("bare"), samples_ms=ms_list(samples["bare"])),
        row("transfer/gradwire value_and_grad", stats=stats["gradwire"], ratio=ratio, target=f">= {TRANSFER_TARGET:g}",
            passed=(ratio >= TRANSFER_TARGET and ok) if gate else None,
            notes=f"ratio = gradwire MiB/s / bare MiB/s; {mb_s('gradwire'):.0f} MiB/s; paired "
                  f"{1 / paired_ratio(samples['gradwire'], samples['bare']):.3f}; phase_ms {fmt_phases(ph)}; "
                  f"grad correct {ok}",
            mib_per_s=mb_s("gradwire"), phase_ms=ph, samples_ms=ms_list(samples["gradwire"])),
        row("transfer/bare gRPC, server in its own process", stats=stats["bare_proc"],
            ratio=mb_s("bare_proc") / mb_s("bare"),
            notes=f"info: the baseline of the next row; {mb_s('bare_proc'):.0f} MiB/s",
            mib_per_s=mb_s("bare_proc"), samples_ms=ms_list(samples["bare_proc"])),
        row("transfer/gradwire, server in its own process", stats=stats["gradwire_proc"],
            ratio=mb_s("gradwire_proc") / mb_s("bare_proc"),
            notes=f"info: vs bare gRPC with its server in its own process too (no shared GIL); "
                  f"{mb_s('gradwire_proc'):.0f} MiB/s; phase_ms "
                  f"{fmt_phases(phase_medians(proc_infos))}",
            mib_per_s=mb_s("gradwire_proc"), phase_ms=phase_medians(proc_infos),
            samples_ms=ms_list(samples["gradwire_proc"])),
    ]


__all__ = ["BareGrpc", "cpu_of", "floor_compute", "floor_server", "plain_server", "gradwire_server", "scaled_repeats", "phase_medians",
           "fmt_phases", "byte_chunks", "paired_ratio", "ms_list", "mib_str", "seed_graph"]
