"""Robustness workloads of the grpc.aio server: what it costs and what it now tolerates.
Every server here runs in a process of its own, so client and server never share a GIL.

* ``aio_latency``     the seed's tiny graph, p50, through the SDK and a bare stub, against
                      a bare gRPC echo (sync server, its own process). With
                      ``GRADWIRE_BENCH_BASELINE_TREE=/path`` (a checkout of the threaded
                      server, e.g. ``git worktree add /tmp/oldtree f6c3f68``) the same calls
                      against that tree's server too, in the same interleaved rounds: the
                      before/after rows; absent, they are skipped. ``GRADWIRE_BENCH_CANDIDATE_TREE``
                      adds more trees the same way (``os.pathsep``-separated: design changes
                      tried in copies, or an intermediate commit), reported as info.
                      Floor rows, no gradwire server code (``ChildServer``): bare grpc.aio
                      echoes, inline and through the event loop → thread pool → event loop hop
                      the server's compute takes; and the minimal Compute handler (lookup,
                      read, engine, answer) on a threaded server, on grpc.aio through that
                      hop, and on grpc.aio inline.
* ``stalled_streams`` health-check p50/p99 while N CreateSession streams (16 ... 1024) sent
                      their header and stalled, against the same with none open.
* ``deadline_idle``   a computation of many seconds with a short deadline: how long after
                      the deadline the server process's CPU falls idle (/proc/PID/stat sampled
                      every 10 ms), against 100 ms plus the time of one node.

``tree_server`` (a gradwire server of any checkout, started from that checkout's folder so
its code is the one imported) is the helper they share.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .registry import Config, Row, row, workload
from .timing import median, percentile, round_orders, summarize

BASELINE_ENV = "GRADWIRE_BENCH_BASELINE_TREE"
CANDIDATE_ENV = "GRADWIRE_BENCH_CANDIDATE_TREE"


# ---------------------------------------------------------------- servers in their own process

_TREE_SERVER = r"""
import json, logging, os, sys
config = json.loads(sys.argv[1])
# as `gradwire serve` does: per-request INFO lines, here written to nowhere
logging.basicConfig(level="INFO", stream=open(os.devnull, "w"),
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
import gradwire.server.app as app
from gradwire.server.config import ServerConfig
import tempfile
config.setdefault("job_dir", tempfile.mkdtemp(prefix="gradwire-bench-jobs-"))  # one server per job folder
server, port = app.create_server(ServerConfig(**config))
print(port, os.path.realpath(app.__file__), flush=True)
sys.stdin.read()
server.stop(0)
"""


class TreeServer:
    """A running server of one checkout in a child process: ``address``, ``pid``, ``module``
    (the ``server/app.py`` it actually imported)."""

    def __init__(self, address: str, pid: int, module: str):
        self.address, self.pid, self.module = address, pid, module


@contextlib.contextmanager
def tree_server(tree: str | None = None, **config: Any) -> Iterator[TreeServer]:
    """A gradwire server (``create_server`` on 127.0.0.1, port 0, a throw-away job
    directory, ``ServerConfig(**config)``) in a child process started in ``tree`` (None: the
    current directory, i.e. this code), so that checkout's ``gradwire`` is the one imported.
    Ends when its stdin closes; killed by its pid if it lingers."""
    job_dir = tempfile.mkdtemp(prefix="gradwire-bench-jobs-")
    settings = {"host": "127.0.0.1", "port": 0, "job_dir": job_dir, "grace_seconds": 0, **config}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    proc = subprocess.Popen([sys.executable, "-c", _TREE_SERVER, json.dumps(settings)], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        if len(line) != 2:
            raise RuntimeError(f"the server of {tree or os.getcwd()} exited with status {proc.wait()} before answering")
        port, module = line
        if tree is not None and not module.startswith(os.path.realpath(tree) + os.sep):
            raise RuntimeError(f"a server started in {tree} imported {module}, not that tree's code")
        yield TreeServer(f"127.0.0.1:{port}", proc.pid, module)
    finally:
        _end(proc)
        shutil.rmtree(job_dir, ignore_errors=True)


def _end(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


class ChildServer:
    """A bare gRPC server in a process of its own (127.0.0.1, port 0, the gradwire server's
    channel options), no gradwire server code, one of:

    * ``aio_echo``      grpc.aio, unary bytes echo answered inline on the event loop;
    * ``aio_echo_hop``  the same through ``loop.run_in_executor`` on a pool of
                        ``max_concurrent`` threads: the event loop -> thread -> event loop
                        round trip every gradwire compute takes;
    * ``floor_sync``    the floor's ``Compute`` handler (``workloads_service.floor_compute``:
                        lookup, read, engine, answer) on a threaded server, as the latency
                        workload's floor row but in its own process;
    * ``floor_aio_hop`` that handler on grpc.aio through the same hop;
    * ``floor_aio``     that handler on grpc.aio inline on the event loop.

    ``echo(payload)`` for the echoes; ``address`` for an SDK client of the floors."""

    ECHO_SERVICE = "gradwire.bench.AioBare"
    KINDS = ("aio_echo", "aio_echo_hop", "floor_sync", "floor_aio_hop", "floor_aio")

    def __init__(self, kind: str):
        import grpc

        from ..server.app import channel_options
        from ..server.config import ServerConfig

        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        code = f"from gradwire.bench.workloads_robust import ChildServer; ChildServer.serve({kind!r})"
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self._proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"the {kind} server exited with status {self._proc.wait()} before answering")
        self.port = int(line)
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=channel_options(ServerConfig().max_message_bytes))
        self.echo = self.channel.unary_unary(f"/{self.ECHO_SERVICE}/Echo")

    @classmethod
    def serve(cls, kind: str) -> None:
        """The child process: print the port, serve until stdin closes."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        import grpc.aio

        from .workloads_service import floor_compute, plain_server
        from ..protos import gradwire_pb2 as pb
        from ..server.app import channel_options
        from ..server.config import ServerConfig

        config = ServerConfig()
        if kind == "floor_sync":
            server, _, port = plain_server("gradwire.v1.Gradwire", {
                "Compute": grpc.unary_unary_rpc_method_handler(
                    floor_compute(), request_deserializer=pb.ComputeRequest.FromString,
                    response_serializer=pb.ComputeResponse.SerializeToString),
            }, config.max_message_bytes, config.max_concurrent + 8)
            print(port, flush=True)
            sys.stdin.read()
            server.stop(0).wait()
            return

        pool = ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="aio-hop")
        hop = kind.endswith("_hop")
        work = floor_compute() if kind.startswith("floor") else (lambda request, context: request)

        async def handler(request, context):
            if hop:
                return await asyncio.get_running_loop().run_in_executor(pool, work, request, context)
            return work(request, context)

        if kind.startswith("floor"):
            service, method = "gradwire.v1.Gradwire", grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=pb.ComputeRequest.FromString,
                response_serializer=pb.ComputeResponse.SerializeToString)
            name = "Compute"
        else:
            service, method, name = cls.ECHO_SERVICE, grpc.unary_unary_rpc_method_handler(handler), "Echo"

        async def main() -> None:
            server = grpc.aio.server(options=channel_options(config.max_message_bytes))
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {name: method}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            print(port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await server.stop(0)

        asyncio.run(main())

    def close(self) -> None:
        self.channel.close()
        _end(self._proc)

    def __enter__(self) -> "ChildServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _trees() -> dict[str, str]:
    """The optional other checkouts named by the environment: ``before`` (the baseline) and
    one ``candidate N`` per path of ``GRADWIRE_BENCH_CANDIDATE_TREE`` (``os.pathsep``-separated)."""
    out = {}
    named = [("before", os.environ.get(BASELINE_ENV, ""))]
    candidates = [p for p in os.environ.get(CANDIDATE_ENV, "").split(os.pathsep) if p]
    named += [(f"candidate {i + 1}" if len(candidates) > 1 else "candidate", p) for i, p in enumerate(candidates)]
    for key, path in named:
        if path:
            if not os.path.isfile(os.path.join(path, "server", "app.py")):
                env = BASELINE_ENV if key == "before" else CANDIDATE_ENV
                raise RuntimeError(f"{env}: {path} is not a gradwire checkout (no server/app.py)")
            out[key] = path
    return out


def _git_head(tree: str | None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "server", "worker"], cwd=tree,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" + uncommitted server/worker edits" if dirty else "") if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---------------------------------------------------------------- aio_latency (issue 1)

AIO_LATENCY_TARGET = 2.0  # gradwire p50 / bare gRPC echo p50, both servers in their own process
REGRESSION_TARGET = 1.05  # after p50 / before p50: "no regression", allowing 5% of paired noise
AIO_LATENCY_CALLS = 400


@workload("aio_latency")
def aio_latency(cfg: Config) -> list[Row]:
    """Tiny graph p50 through the aio server (and optionally the threaded one) vs a bare echo."""
    import gradwire as gw
    from .workloads_service import BareGrpc, _raw_compute, ms_list, paired_ratio, scaled_repeats, \
        seed_graph, timed

    calls = scaled_repeats(cfg, "aio_latency", AIO_LATENCY_CALLS, floor=30)
    graph, params, batch = seed_graph()
    ref_loss, _ = gw.local().value_and_grad(graph, params, batch)
    trees = {"after": None, **_trees()}
    labels = {"after": f"after: grpc.aio ({_git_head(None)})"}
    for key, tree in trees.items():
        if key != "after":
            labels[key] = f"{key}: {tree} ({_git_head(tree)})"
    with contextlib.ExitStack() as stack:
        servers = {key: stack.enter_context(tree_server(tree)) for key, tree in trees.items()}
        bare = stack.enter_context(BareGrpc(own_process=True))
        child = {kind: stack.enter_context(ChildServer(kind)) for kind in ChildServer.KINDS}
        variants: dict[str, Any] = {}
        same: dict[str, bool] = {}
        for kind in ("floor_sync", "floor_aio_hop", "floor_aio"):
            client = stack.enter_context(gw.connect(child[kind].address))
            same[kind] = client.value_and_grad(graph, params, batch)[0] == ref_loss
            variants[kind] = (lambda c=client: c.value_and_grad(graph, params, batch))
        for key, server in servers.items():
            client = stack.enter_context(gw.connect(server.address))
            raw = _raw_compute(server.address, graph, params, batch)
            same[key] = client.value_and_grad(graph, params, batch)[0] == ref_loss  # registers the graph
            same[key] = same[key] and raw()[0] == ref_loss
            variants[key] = (lambda c=client: c.value_and_grad(graph, params, batch))
            variants[f"{key}_raw"] = raw
        client = stack.enter_context(gw.connect(servers["after"].address))
        before = client.bytes_sent
        client.value_and_grad(graph, params, batch)
        payload = bytes(client.bytes_sent - before)
        echoes = {"echo": bare.echo, "aio_echo": child["aio_echo"].echo, "aio_hop": child["aio_echo_hop"].echo}
        assert all(len(echo(payload)) == len(payload) for echo in echoes.values())
        variants.update({name: (lambda e=echo: e(payload)) for name, echo in echoes.items()})
        cfg.log(f"[aio_latency] seed graph, {calls} calls per variant interleaved ({len(variants)} variants), "
                f"every server in its own process; request {len(payload)} B; trees: "
                + "; ".join(f"{k} {servers[k].module}" for k in servers))
        samples = timed(variants, repeats=calls, warmup=max(10, cfg.warmup))

    stats = {k: summarize(v) for k, v in samples.items()}
    echo = stats["echo"]
    gate = not cfg.quick

    def p(name: str) -> str:
        return f"p50 {stats[name]['p50_ms']:.3f} ms, p99 {stats[name]['p99_ms']:.3f} ms"

    def vs_echo(name: str) -> float:
        return stats[name]["p50_ms"] / echo["p50_ms"]

    def extra_ms(name: str, base: str = "echo") -> float:
        return stats[name]["p50_ms"] - stats[base]["p50_ms"]

    prefix = "aio_latency/"
    rows = [row(prefix + "grpc echo (bare sync server, own process)", stats=echo, ratio=1.0,
                notes=f"baseline; {p('echo')}; unary bytes echo of {len(payload)} B", payload_bytes=len(payload),
                samples_ms=ms_list(samples["echo"]))]
    rows.append(row(prefix + "floor: grpc.aio echo, inline", stats=stats["aio_echo"], ratio=vs_echo("aio_echo"),
                    notes=f"info: a bare grpc.aio server, no gradwire code; {p('aio_echo')}; "
                          f"{extra_ms('aio_echo') * 1e3:+.0f} us vs the sync echo",
                    samples_ms=ms_list(samples["aio_echo"])))
    rows.append(row(prefix + "floor: grpc.aio echo through loop -> thread pool -> loop", stats=stats["aio_hop"],
                    ratio=vs_echo("aio_hop"),
                    notes=f"info: the hop every gradwire compute takes (run_in_executor), no gradwire code; "
                          f"{p('aio_hop')}; the hop costs {extra_ms('aio_hop', 'aio_echo') * 1e3:+.0f} us, aio with "
                          f"the hop {extra_ms('aio_hop') * 1e3:+.0f} us vs the sync echo",
                    samples_ms=ms_list(samples["aio_hop"])))
    for name, label, base in (
            ("floor_sync", "floor: SDK + the minimal Compute handler (lookup, read, engine, answer), threaded server",
             "echo"),
            ("floor_aio_hop", "floor: SDK + the same handler on grpc.aio through loop -> thread pool -> loop",
             "floor_sync"),
            ("floor_aio", "floor: SDK + the same handler on grpc.aio, inline on the event loop", "floor_sync")):
        rows.append(row(prefix + label, stats=stats[name], ratio=vs_echo(name),
                        notes=f"info: no gradwire server code; {p(name)}; "
                              + (f"{extra_ms(name) * 1e3:+.0f} us vs the echo" if base == "echo" else
                                 f"{extra_ms(name, base) * 1e3:+.0f} us vs the threaded floor")
                              + f"; loss==local {same[name]}",
                        samples_ms=ms_list(samples[name])))
    for key in trees:
        for kind, name in (("SDK", key), ("bare stub", f"{key}_raw")):
            judged = key == "after" and kind == "SDK"
            r = vs_echo(name)
            notes = (f"p50 ratio vs the echo; {p(name)}; paired {paired_ratio(samples[name], samples['echo']):.2f}; "
                     f"{extra_ms(name) * 1e3:+.0f} us vs the echo; loss==local {same[key]}")
            if not judged:
                notes = "info: " + notes
            rows.append(row(f"{prefix}gradwire {labels[key]}, {kind}", stats=stats[name], ratio=r,
                            target=AIO_LATENCY_TARGET if judged else None,
                            passed=(r <= AIO_LATENCY_TARGET if gate else None) if judged else None,
                            notes=notes, server_module=servers[key].module, samples_ms=ms_list(samples[name])))
    for key in trees:
        if key == "after":
            continue
        for kind, suffix in (("SDK", ""), ("bare stub", "_raw")):
            a, b = f"after{suffix}", f"{key}{suffix}"
            r = stats[a]["p50_ms"] / stats[b]["p50_ms"]
            judged = key == "before"
            rows.append(row(f"{prefix}after / {key}, {kind} p50", ratio=r,
                            target=REGRESSION_TARGET if judged else None,
                            passed=(r <= REGRESSION_TARGET if gate else None) if judged else None,
                            notes=("no regression (5% allowed for noise); " if judged else "info: ")
                                  + f"after {stats[a]['p50_ms']:.3f} ms, {key} {stats[b]['p50_ms']:.3f} ms "
                                    f"({(stats[a]['p50_ms'] - stats[b]['p50_ms']) * 1e3:+.0f} us); paired "
                                    f"{paired_ratio(samples[a], samples[b]):.3f}"))
    if "before" not in trees:
        rows.append(row(prefix + "after / before", passed=None,
                        notes=f"skipped: set {BASELINE_ENV}=<checkout of the threaded server, e.g. f6c3f68>"))
    return rows


# ---------------------------------------------------------------- stalled_streams (issue 2)

STALLED_LEVELS = (16, 64, 256, 1024)
STALLED_QUICK_LEVELS = (16,)
STALLED_JUDGED = 256
STALLED_P99_MS = 1000.0
STALLED_CHECKS = 300  # health checks per level (split over the blocks)
STALLED_BLOCKS = 3
HEALTH_TIMEOUT = 5.0


class _StalledStreams:
    """An event loop in a thread of its own that holds ``n`` CreateSession streams open, each
    having sent a header naming the seed graph and nothing more."""

    def __init__(self, address: str):
        import asyncio

        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-stalled", daemon=True)
        self.thread.start()
        self.channel = None
        self.calls: list = []

    def _on(self, coroutine, timeout: float = 120):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def open(self, n: int, header) -> float:
        """Open ``n`` streams; the seconds it took."""
        t0 = time.perf_counter()
        self._on(self._open(n, header))
        return time.perf_counter() - t0

    async def _open(self, n: int, header) -> None:
        import grpc.aio

        from ..protos import gradwire_pb2_grpc as pb_grpc

        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address)
        stub = pb_grpc.GradwireStub(self.channel)
        for _ in range(n):
            call = stub.CreateSession()
            await call.write(header)
            self.calls.append(call)

    def still_open(self) -> int:
        return sum(not call.done() for call in self.calls)

    def close_all(self) -> None:
        async def close():
            for call in self.calls:
                call.cancel()
            self.calls = []
        self._on(close())

    def stop(self) -> None:
        async def shut():
            if self.channel is not None:
                await self.channel.close()
        with contextlib.suppress(Exception):
            self.close_all()
            self._on(shut(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@workload("stalled_streams")
def stalled_streams(cfg: Config) -> list[Row]:
    """Health-check latency while N CreateSession streams sent a header and stalled."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .workloads_service import ms_list, scaled_repeats, seed_graph
    from ..protos import gradwire_pb2 as pb
    from ..worker.codec import graph_to_proto

    levels = (0, *(STALLED_QUICK_LEVELS if cfg.quick else STALLED_LEVELS))
    blocks = 1 if cfg.quick else STALLED_BLOCKS
    per_block = max(5, scaled_repeats(cfg, "stalled_streams", STALLED_CHECKS) // blocks)
    graph, _, _ = seed_graph()
    header = pb.SessionRequest(header=pb.SessionHeader(graph=graph_to_proto(graph.graph_def)))
    samples: dict[int, list[float]] = {n: [] for n in levels}
    unanswered = {n: 0 for n in levels}
    open_at_end: dict[int, list[int]] = {n: [] for n in levels}
    open_s: dict[int, list[float]] = {n: [] for n in levels}
    request = health_pb2.HealthCheckRequest()
    # streams must outlive the measurement: an idle timeout far beyond it
    with tree_server(idle_timeout=3600) as server, grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        streams = _StalledStreams(server.address)
        try:
            for _ in range(20):  # warm-up: connection, first calls
                health.Check(request, timeout=HEALTH_TIMEOUT)
            orders = round_orders([str(n) for n in levels], blocks)
            cfg.log(f"[stalled_streams] levels {levels}, {blocks} blocks x {per_block} health checks per level, "
                    f"level order per block {[list(map(int, o)) for o in orders]}; server {server.module}")
            for order in orders:
                for n in map(int, order):
                    open_s[n].append(streams.open(n, header))
                    time.sleep(0.3)  # the server takes them all in
                    for _ in range(per_block):
                        t0 = time.perf_counter()
                        try:
                            ok = health.Check(request, timeout=HEALTH_TIMEOUT).status == \
                                health_pb2.HealthCheckResponse.SERVING
                        except grpc.RpcError:
                            ok = False
                        samples[n].append(time.perf_counter() - t0)
                        unanswered[n] += not ok
                    open_at_end[n].append(streams.still_open())
                    streams.close_all()
                    time.sleep(0.2)  # cancellations reach the server
        finally:
            streams.stop()

    stats = {n: summarize(v) for n, v in samples.items()}
    base = stats[0]
    rows = []
    for n in levels:
        s = stats[n]
        checks = len(samples[n])
        judged = n == STALLED_JUDGED
        ok = unanswered[n] == 0 and s["p99_ms"] < STALLED_P99_MS and min(open_at_end[n]) == n
        notes = (f"health p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, max {s['max_ms']:.1f} ms; "
                 f"{checks - unanswered[n]}/{checks} answered")
        if n:
            notes += (f"; ratio = p50 vs 0 streams (p99 {s['p99_ms'] / base['p99_ms']:.2f}x); streams still open "
                      f"at the end {min(open_at_end[n])}/{n}; opening them took {median(open_s[n]) * 1e3:.0f} ms")
        else:
            notes = "baseline; " + notes
        rows.append(row(f"stalled_streams/health with {n} stalled CreateSession streams", stats=s,
                        ratio=s["p50_ms"] / base["p50_ms"],
                        target=f"all answered, p99 < {STALLED_P99_MS:g} ms" if judged else None,
                        passed=(ok if not cfg.quick else None) if judged else None,
                        notes=notes if judged or not n else "info: " + notes,
                        streams=n, p99_ms=s["p99_ms"], answered=checks - unanswered[n], checks=checks,
                        open_at_end=min(open_at_end[n]), samples_ms=ms_list(samples[n])))
    return rows


# ---------------------------------------------------------------- deadline_idle (issue 3)

DEADLINE_SHAPE = (24, 1024, 4096)  # layers, width, batch rows: the sizes of tests/test_server_answers.py's heavy request
DEADLINE_QUICK_SHAPE = (32, 512, 1024)
DEADLINE_S = 1.5
DEADLINE_QUICK_S = 0.2
DEADLINE_TRIALS = 5
IDLE_WINDOW_S = 0.05
IDLE_FRACTION = 0.10  # of one core
SAMPLE_S = 0.01
AFTER_S = 3.0  # sampling after the deadline
IDLE_BUDGET_MS = 100.0  # target: idle within this plus one node's time


def _heavy_request(layers: int, width: int, n: int):
    """A deep tanh MLP as one small Compute request: ``layers`` nodes of ``tanh(h @ W)``,
    ``n x width @ width x width`` each, sharing one ``W`` (4 MiB at width 1024), on
    ``h0 = x @ c`` with ``x`` of ``n x 1``: the request is a few MiB, so it arrives in
    milliseconds even on a busy machine and the deadline falls inside the computation (a
    request carrying ``layers`` weights and an ``n x width`` batch, as the test's, took longer
    than the deadline to upload when other processes used the CPUs)."""
    import gradwire as gw
    from ..protos import gradwire_pb2 as pb
    from ..worker.codec import graph_to_proto, tensor_chunks

    def whole(name, array):
        return next(tensor_chunks(name, np.asarray(array), 1 << 30))

    g = gw.Graph()
    x, c = g.input("x", (None, 1)), g.param("c", (1, width))
    w = g.param("w", (width, width))
    h = x @ c
    for _ in range(layers):
        h = gw.tanh(h @ w)
    g.set_loss(gw.mean(h * h))
    rng = np.random.default_rng(0)
    params = {"c": rng.standard_normal((1, width)).astype(np.float32),
              "w": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)}
    x_value = rng.standard_normal((n, 1)).astype(np.float32)
    request = pb.ComputeRequest(header=pb.ComputeHeader(graph=graph_to_proto(g.graph_def)),
                                params=[whole(k, v) for k, v in params.items()], batch=[whole("x", x_value)])
    return request, params["w"], (x_value @ params["c"]).astype(np.float32)


def _node_times(w: np.ndarray, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median seconds of one forward node (tanh(x @ w)) and of one layer's backward
    (the tanh VJP and both matmul VJPs), in this process with its default BLAS threads."""
    fwd, bwd = [], []
    h = np.tanh(x @ w)
    g = np.ones_like(h)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = np.tanh(x @ w)
        fwd.append(time.perf_counter() - t0)
        del out
        t0 = time.perf_counter()
        gz = g * (1 - h * h)
        gx, gw_ = gz @ w.T, x.T @ gz
        bwd.append(time.perf_counter() - t0)
        del gz, gx, gw_
    return median(fwd), median(bwd)


def _cpu_readers(pid: int):
    """(utime+stime seconds of the process from /proc/PID/stat, ns-precise runtime of all its
    threads from /proc/PID/task/*/schedstat in seconds)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat() -> float:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / tick

    def schedstat() -> float:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
        return total / 1e9

    return stat, schedstat


class _Sampler:
    """(monotonic time, stat CPU, schedstat CPU) of a process every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_S):
        self.stat, self.schedstat = _cpu_readers(pid)
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), self.stat(), self.schedstat()))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _idle_after(samples: list[tuple[float, float, float]], start: float, column: int) -> float | None:
    """Seconds from ``start`` to the first sample at or after it that opens a window of at
    least ``IDLE_WINDOW_S`` whose CPU use is below ``IDLE_FRACTION`` of a core."""
    for i, (t, *cpu) in enumerate(samples):
        if t < start:
            continue
        for t2, *cpu2 in samples[i + 1:]:
            if t2 - t >= IDLE_WINDOW_S - 1e-4:
                if (cpu2[column] - cpu[column]) / (t2 - t) < IDLE_FRACTION:
                    return t - start
                break
    return None


def _busy(samples: list[tuple[float, float, float]], t0: float, t1: float, column: int = 1) -> float:
    """Cores used between ``t0`` and ``t1`` (the samples nearest inside)."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][column + 1] - inside[0][column + 1]) / (inside[-1][0] - inside[0][0])


def _wait_idle(stat, limit: float = 30.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        c0, t0 = stat(), time.monotonic()
        time.sleep(0.2)
        if (stat() - c0) / (time.monotonic() - t0) < IDLE_FRACTION:
            return


@workload("deadline_idle")
def deadline_idle(cfg: Config) -> list[Row]:
    """A long computation with a short deadline: time from the deadline to an idle server CPU."""
    import grpc

    from .workloads_service import scaled_repeats

    if not os.path.exists("/proc/self/stat"):
        return [row("deadline_idle/skipped", passed=None, notes="needs Linux /proc")]
    layers, width, n = DEADLINE_QUICK_SHAPE if cfg.quick else DEADLINE_SHAPE
    deadline_s = DEADLINE_QUICK_S if cfg.quick else DEADLINE_S
    trials = scaled_repeats(cfg, "deadline_idle", DEADLINE_TRIALS, floor=1)
    request, w, x = _heavy_request(layers, width, n)
    request_mib = request.ByteSize() / 2**20
    limit = 1 << 30
    results: list[dict[str, Any]] = []
    with tree_server(max_concurrent=1, max_message_bytes=limit) as server, \
            grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", limit),
                                                           ("grpc.max_receive_message_length", limit)]) as channel:
        # the request's bytes are made once: serializing 100 MiB in the call would hold this
        # process's GIL, and with it the CPU sampler, for tens of milliseconds
        compute = channel.unary_unary("/gradwire.v1.Gradwire/Compute")
        payload = request.SerializeToString()
        del request
        stat, _ = _cpu_readers(server.pid)
        fwd_s, bwd_s = _node_times(w, x, repeats=3 if cfg.quick else 10)  # the server is idle meanwhile
        cfg.log(f"[deadline_idle] {layers} layers of {n}x{width} @ {width}x{width}, request {request_mib:.0f} MiB, "
                f"deadline {deadline_s:g} s, {trials} trials; one node {fwd_s * 1e3:.0f} ms forward, "
                f"{bwd_s * 1e3:.0f} ms backward; server pid {server.pid} ({server.module})")
        refused = 0  # trials that found the only slot still taken (RESOURCE_EXHAUSTED), retried
        while len(results) < trials:
            _wait_idle(stat)
            with _Sampler(server.pid) as sampler:
                time.sleep(0.05)
                started = time.monotonic()
                try:
                    compute(payload, timeout=deadline_s)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                answered = time.monotonic()
                deadline = started + deadline_s
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused < 20:
                    refused += 1
                    time.sleep(0.25)
                    continue
                time.sleep(max(0.0, deadline + AFTER_S - time.monotonic()))
            samples = sampler.samples
            results.append({
                "code": code.name, "answered_after_deadline_ms": (answered - deadline) * 1e3,
                "idle_s": _idle_after(samples, deadline, 0), "idle_schedstat_s": _idle_after(samples, deadline, 1),
                "busy_before": _busy(samples, deadline - 0.2, deadline),
                "busy_after_1s": _busy(samples, deadline + 1.0, deadline + AFTER_S),
                "sample_gap_ms": 1e3 * max((b[0] - a[0] for a, b in zip(samples, samples[1:]) if b[0] >= deadline),
                                           default=0.0),  # the longest after the deadline
            })
            cfg.log(f"[deadline_idle] trial: {results[-1]}")

    node_ms = fwd_s * 1e3
    bound_ms = IDLE_BUDGET_MS + node_ms
    # a trial counts if the server was computing when the deadline came (at least half a core
    # in the 200 ms before it) and the call ended by its deadline
    counted = [r for r in results if r["code"] == "DEADLINE_EXCEEDED" and r["busy_before"] >= 0.5]
    valid = counted or results  # none counted: reported, and failed
    idle = [r["idle_s"] if r["idle_s"] is not None else AFTER_S for r in valid]
    idle_precise = [r["idle_schedstat_s"] if r["idle_schedstat_s"] is not None else AFTER_S for r in valid]
    stats = summarize(idle)
    worst = max(idle) * 1e3
    codes = sorted({r["code"] for r in results})
    was_busy = min(r["busy_before"] for r in valid)
    ratio = worst / bound_ms
    rows = [
        row("deadline_idle/one node: tanh(x @ w)", stats=summarize([fwd_s]), ratio=None,
            notes=f"info: {n}x{width} @ {width}x{width} float32 in the bench process, median of the repeats; one "
                  f"layer's backward (tanh VJP and both matmul VJPs, checked for cancellation as one step each) "
                  f"{bwd_s * 1e3:.1f} ms", node_ms=node_ms, backward_layer_ms=bwd_s * 1e3),
        row("deadline_idle/deadline -> server CPU idle", stats=stats, ratio=ratio,
            target=f"<= {IDLE_BUDGET_MS:g} ms + one node = {bound_ms:.0f} ms",
            passed=(ratio <= 1.0 and bool(counted)) if not cfg.quick else None,
            notes=f"ratio = slowest of {len(idle)} trials / the bound ({len(results) - len(counted)} of "
                  f"{len(results)} trials found the server not computing at the deadline"
                  f"{': none counted, all shown' if not counted else ', left out'}; {refused} starts refused, "
                  f"the only slot still taken, and retried); idle = first {IDLE_WINDOW_S * 1e3:.0f} ms "
                  f"window under {IDLE_FRACTION:.0%} of a core (/proc/PID/stat, {SAMPLE_S * 1e3:.0f} ms samples, "
                  f"{1e3 / os.sysconf('SC_CLK_TCK'):.0f} ms ticks): {', '.join(f'{v * 1e3:.0f}' for v in idle)} ms; "
                  f"by schedstat (ns): {', '.join(f'{v * 1e3:.0f}' for v in idle_precise)} ms; server busy "
                  f">= {was_busy:.2f} cores in the 200 ms before each deadline; {'/'.join(codes)} "
                  f"{median([r['answered_after_deadline_ms'] for r in results]):+.0f} ms from the deadline; "
                  f"{max(r['busy_after_1s'] for r in results):.3f} cores 1-{AFTER_S:g} s after",
            node_ms=node_ms, bound_ms=bound_ms, worst_ms=worst, trials=results, counted_trials=len(counted),
            refused_starts=refused, request_mib=request_mib),
    ]
    return rows


__all__ = ["ChildServer", "TreeServer", "tree_server"]
