"""Coverage-guided fuzzing of the server's request path: request bytes -> decode -> validate -> run.

    python -m gradwire.bench.fuzz [--seconds S] [--workers N] [--engine auto|atheris|hypothesis]
                                  [--seed N] [--rss-mb M] [--report PATH]
    python -m gradwire.bench.fuzz --replay HEX... | --replay known | --minimize HEX

The target is the real handler code, in-process: a ``GradwireServer``'s servicer (its graph
and session stores, job manager, admission and local backend, built by the server's own
constructor, with small limits), whose ``Compute``, ``RegisterGraph``, ``CreateSession``
and ``SubmitJob`` coroutines are awaited on an event loop of the harness with a stand-in for
the gRPC context. Each request message is decoded from its bytes by
``frames.lenient_decoder``, as the gRPC layer does (``app.add_servicer``), and an answer is
serialized by ``frames.serialize``. Only the transport is replaced; every exception goes
through the servicer's own ``_unary``/``_failure`` and so through ``status.status_for``.

The property, checked for every input:

* the call ends in an answer (which serializes) or in a status from the status table that
  is neither INTERNAL nor UNKNOWN (an exception escaping the handler would be UNKNOWN);
* no ``MemoryError`` was mapped to a status (the server's limits, not the address-space
  cap, must stop a request), and the process' peak RSS stays below ``--rss-mb``;
* it is bounded in time (``--hang-seconds``; a watchdog ends the process after
  ``--hard-seconds``), a submitted job ends or stops when cancelled, and no slot or byte of
  the memory budget stays held afterwards; a job step that fails with an exception outside
  the status table counts as INTERNAL too;
* no crash of the process (a supervisor runs each worker in a subprocess and reports the
  input that was running);
* differential: a Compute answered with more than one shard must give the same tensors,
  dtypes and shapes as the same request on one shard, and values within 1e-2 where all are
  finite and below 1e4 (shards change only the order of sums); a fetched value without a
  batch dimension may come back stacked by shard, as ``shards.combine`` documents.

Input format: byte 0 selects the kind (``& 3``) and, with ``& 0x80``, decoding by the framed
walk of ``frames.decode`` whatever the message's size (``SMALL_MESSAGE`` set to 0 for that
input; otherwise only messages over 64 KiB take that path). For the unary kinds the rest is
the request message; for the streaming kinds it is the stream's messages, each preceded by
its length as a varint (a length past the end takes the rest). The 34-byte session id
``SESSION_PLACEHOLDER`` is replaced by the id of a live session of the base graph.

Seeds are built at run time: every message of the bad-request corpus (``CASES`` of
``tests/test_bad_requests.py``, loaded from the checkout by file path), good requests of
each kind and the regression seeds of bugs found (``REGRESSIONS``). Mutation is structured
(``Mutator``: field-level edits of the parsed messages: shapes, dtypes, op names, attrs,
node inputs, tensor sizes and bytes, headers, optimizer JSON, stream splits, conversions
between kinds, tensors rebuilt to fit a mutated graph) mixed with libFuzzer's byte-level
mutations. Engines: atheris (libFuzzer, coverage of the ``gradwire`` modules) when it is
installed (``pip install atheris``), else hypothesis with the same mutator.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import faulthandler
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import Executor, Future
from pathlib import Path

from ..worker.frames import _varint  # the varint protobuf writes, as in the framer

KINDS = ("Compute", "RegisterGraph", "CreateSession", "SubmitJob")
STREAMING = frozenset({"CreateSession", "SubmitJob"})
FRAMED = 0x80
SESSION_PLACEHOLDER = b"s-" + b"5e55" * 8  # as long as a real session id ("s-" + 32 hex digits)
MAX_LEN = 1 << 17  # bytes of one input (room for a message over frames.SMALL_MESSAGE)

# The server's own limits, small: no request the server admits can come near the memory cap.
FUZZ_LIMITS = dict(
    max_tensor_elements=1 << 15,  # 256 KiB of float64 per tensor, intermediates included
    max_request_bytes=1 << 20,
    max_nodes=48,
    memory_budget=256 << 20,
    max_request_memory=128 << 20,
    max_request_flops=1e8,
    max_concurrent=4,
    max_graphs=256,
    max_sessions=64,
    max_running_jobs=2,
    max_job_steps=32,
    dataset_read_timeout=5.0,
    idle_timeout=5.0,
)
COMPUTE_DEADLINE = 2.0  # the stand-in context's deadline for a Compute call (s)
JOB_SECONDS = 5.0  # how long a submitted job may run before it is cancelled

# Inputs that once broke the property and were fixed, replayed first on every run and by
# tests/test_fuzz.py: (name, input hex, what went wrong). See docs/ARCHITECTURE.md, "Fuzzing".
REGRESSIONS: list[tuple[str, str, str]] = []  # filled in below, after the input format

# Bugs this harness found, reported, not fixed yet. A violation that matches one (its kind, and
# a status with every substring of one ``match`` entry in its detail) is counted under the bug's name
# instead of failing the run; tests/test_fuzz.py replays each bug's inputs as xfail tests,
# which start passing once it is fixed (then move its inputs to REGRESSIONS).
_BASE_PARAMS = "12160a017710011a01032a0c0000003f000080bf0000004012160a016210011a01032a0ccdcccc3dcdcc4c3e9a9999be"


def _job_with_data_path(path: str) -> str:
    """The hex of a SubmitJob input: the base graph by id, its parameters, ``data_path``."""
    header = bytes.fromhex("1222672d36663166333063636363373563336536383266313066656632383065653461331a1a7b226e616d6"
                           "5223a2022736764222c20226c72223a20302e317d20032801") + b"\x42" + _varint(len(path)) + path.encode()
    message = b"\x0a" + _varint(len(header)) + header + bytes.fromhex(_BASE_PARAMS)
    return (bytes([3]) + _varint(len(message)) + message).hex()


KNOWN_BUGS: list[dict] = [  # an entry: {"name", "kind" (None: any), "match": [(status, (substring, ...)),
    # ...], "summary", "inputs": [(label, hex, or None for _job_with_data_path(label))]}
]

# Found by this harness, fixed in 2c7ac4d (ASCII) and 350ad72 (by encoded size): a status
# message longer than gRPC's metadata limits (8 KiB soft, 16 KiB hard, percent-encoded: a
# non-ASCII byte takes 3) never reached the client, which got RESOURCE_EXHAUSTED "Stream
# removed (received metadata size exceeds ... limit)" instead of the server's status. Error
# messages quote client-chosen names whole (here an op name). Since the fix a status message
# over DETAILS_LIMIT breaks the property; tests/test_fuzz.py sends these to a real server.
LONG_DETAILS_BUG = {
    "name": "status-details-over-grpc-metadata-limit",
    "summary": "RegisterGraph of a node whose op name is 7000 'x' or 3000 '€' was answered INVALID_ARGUMENT "
               "with a message quoting the name (14 kB, 54 kB on the wire); the client received "
               "RESOURCE_EXHAUSTED 'Stream removed (received metadata size exceeds soft/hard limit)'",
    "request": "RegisterGraph", "op_names": [],  # still open: none
    "fixed": [("x", 7000), ("€", 3000), ("é", 3000)],
}
# found by this harness, fixed in 2c7ac4d: a damaged .npz (empty, truncated, not a zip, bad CRC),
# an empty .npy in a dataset directory or a bare .npy file named as a job's data_path was
# INTERNAL (np.load raises zipfile.BadZipFile, EOFError; a bare .npy is no context manager),
# and so was a .npz member that is no .npy (handed out as bytes: AttributeError on .dtype)
_FIXED_DATASETS = ("empty.npz", "trunc.npz", "garbage.npz", "crc.npz", "emptydir", "plain.npy", "notnpy.npz")
# ... and reshape(x, shape=[]) of a batched input x was INTERNAL (IndexError in _reshape_batch)
_FIXED_RESHAPE = ("010a4a0a140a0178120f0801120bffffffffffffffffff0103221c0a01721207726573686170651a0178220b"
                  "0a05736861706512022a00220e0a046c6f7373120373756d1a01722a046c6f7373")


def known_bug(record: dict) -> str | None:
    """The name of the known bug a violation record is an instance of, if any: its kind, and a
    status with all the substrings of one of the bug's ``match`` entries in the record's detail."""
    for bug in KNOWN_BUGS:
        if bug["kind"] in (None, record["kind"]) and any(
                record["status"] == status and all(m in record["detail"] for m in parts)
                for status, parts in bug["match"]):
            return bug["name"]
    return None


# ---------------------------------------------------------------- input format


def pack(kind: str, messages: list[bytes], framed: bool = False) -> bytes:
    selector = bytes([KINDS.index(kind) | (FRAMED if framed else 0)])
    if kind not in STREAMING:
        return selector + (messages[0] if messages else b"")
    return selector + b"".join(_varint(len(m)) + m for m in messages)


for _bug in KNOWN_BUGS:
    _bug["inputs"] = [(label, h or _job_with_data_path(label)) for label, h in _bug["inputs"]]
REGRESSIONS += [(f"dataset-{path}", _job_with_data_path(path), "SubmitJob with this data_path was INTERNAL")
                for path in _FIXED_DATASETS]
REGRESSIONS.append(("reshape-batched-to-scalar", _FIXED_RESHAPE, "RegisterGraph was INTERNAL (IndexError)"))
# ... and fixed by the engine wrapping a kernel's TypeError: Compute of sum(pad(p, pads=[])) of a
# scalar p was INTERNAL (np.pad's TypeError: `pad_width` must be of integral type)
REGRESSIONS.append(("pad-of-a-scalar", "000a340a3212070a01701202080122170a017912037061641a0170220a0a047061647312022a00220b0a"
                                       "016c120373756d1a01792a016c120b0a017010012a040000c03f",
                    "Compute was INTERNAL (np.pad's TypeError)"))
# ... and fixed in 4658c73: Compute of a sum loss over x (-1, 3), shards=2, fetching
# t = matmul(x, transpose(x)), which couples the examples: with 5 rows it was INTERNAL (the
# shards' (3, 3) and (2, 2) blocks concatenated: ValueError), with 4 rows OK but wrong (t
# float32[4, 2], the diagonal blocks, instead of [4, 4]); the differential check saw that one
# ... and fixed in 77b0e34: a tensor sent whole and then an empty piece at offset == its size
# (w float32[3], then TensorChunk name='w', offset=12, no data) was INTERNAL: the Assembler
# assigned the empty slice into the read-only view of the message (ValueError)
_EMPTY_PIECE = [("CreateSession", "02210a0012160a017710011a01032a0c0000003f000080bf0000004012050a0177200c"),
                ("SubmitJob", "03020a000d1a0b0a017810012a04c25979bf071a050a01782004"),
                ("Compute", "000aa9010aa6010a140a0178120f0801120bffffffffffffffffff0103120a0a017712050801120103120a0a"
                            "01621205080112010322100a036d756c12036d756c1a01781a017722120a0361646412036164641a036d756c"
                            "1a016222110a0472656c75120472656c751a03616464221a0a097369676d6f69645f3012077369676d6f6964"
                            "1a0472656c7522160a046c6f7373120373756d1a097369676d6f69645f302a046c6f73733a0373756d12160a"
                            "017710011a01032a0c0000003f000080bf0000004012050a0177200c12160a016210011a01032a0ccdcccc3d"
                            "cdcc4c3e9a9999be1a3b0a017810011a0204032a3000000000cdcccc3dcdcc4c3e9a99993ecdcccc3e000000"
                            "3f9a99193f3333333fcdcc4c3f6666663f0000803fcdcc8c3f")]
REGRESSIONS += [(f"empty-piece-after-whole-{label}", h, f"{label} was INTERNAL (read-only view)")
                for label, h in _EMPTY_PIECE]
# ... and fixed in b04fd32: softmax_cross_entropy(f) or nll_loss(f) of a single input was INTERNAL
# (variadic since 94a8d5a: the arity check let one input through to a shape rule wanting labels)
REGRESSIONS += [
    ("softmax_cross_entropy-one-input", "010a2f120b0a01661206080112020203221d0a01791215736f66746d61785f63726f73"
                                        "735f656e74726f70791a01662a0179", "RegisterGraph was INTERNAL (TypeError)"),
    ("nll_loss-one-input", "010a22120b0a0166120608011202020322100a017912086e6c6c5f6c6f73731a01662a0179",
     "RegisterGraph was INTERNAL (TypeError)"),
]
REGRESSIONS += [
    ("sharded-fetch-coupled-5-rows", ("000aa9010aa1010a140a0178120f0801120bffffffffffffffffff0103120a0a017712050801120103222b0a0b747261"
     "6e73706f73655f3012097472616e73706f73651a0178220e0a047065726d12062a040a020100221b0a017412066d6174"
     "6d756c1a01781a0b7472616e73706f73655f3022120a056d756c5f3112036d756c1a01781a017722130a0573756d5f32"
     "120373756d1a056d756c5f312a0573756d5f323a0373756d320174380212160a017710011a01032a0c0000803f000080"
     "3f0000803f1a470a017810011a0205032a3c0000803f0000803f0000803f0000803f0000803f0000803f0000803f0000"
     "803f0000803f0000803f0000803f0000803f0000803f0000803f0000803f"),
     "Compute was INTERNAL (ValueError in shards._concat_or_stack)"),
    ("sharded-fetch-coupled-4-rows", ("000aa9010aa1010a140a0178120f0801120bffffffffffffffffff0103120a0a017712050801120103222b0a0b747261"
     "6e73706f73655f3012097472616e73706f73651a0178220e0a047065726d12062a040a020100221b0a017412066d6174"
     "6d756c1a01781a0b7472616e73706f73655f3022120a056d756c5f3112036d756c1a01781a017722130a0573756d5f32"
     "120373756d1a056d756c5f312a0573756d5f323a0373756d320174380212160a017710011a01032a0c0000803f000080"
     "3f0000803f1a3b0a017810011a0204032a300000803f0000803f0000803f0000803f0000803f0000803f0000803f0000"
     "803f0000803f0000803f0000803f0000803f"),
     "Compute answered a fetched x @ x.T of shape [4, 2] on 2 shards, [4, 4] on one"),
]


def unpack(data: bytes) -> tuple[str, bool, list[bytes]]:
    if not data:
        return KINDS[0], False, [b""]
    kind, framed, rest = KINDS[data[0] & 3], bool(data[0] & FRAMED), data[1:]
    if kind not in STREAMING:
        return kind, framed, [rest]
    messages, pos = [], 0
    while pos < len(rest):
        length = shift = 0
        while pos < len(rest) and shift < 35:
            byte = rest[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        messages.append(rest[pos:pos + length])
        pos += length
    return kind, framed, messages


# ---------------------------------------------------------------- the target


class _Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(code, details)
        self.code, self.details = code, details


class _Context:
    """What the handlers use of ``grpc.aio.ServicerContext``."""

    def __init__(self, timeout: float | None):
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code, details=""):
        raise _Aborted(code, details)


class _Inline(Executor):
    """Runs the servicer's pool work in the calling thread: the same code, no thread hop."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting handler
            future.set_exception(exc)
        return future


class Violation(Exception):
    """An input that breaks the property."""

    def __init__(self, what: str, data: bytes, kind: str, status: str, detail: str = ""):
        super().__init__(f"{what}: {kind} -> {status}; input {data.hex()}\n{detail}")
        self.record = {"what": what, "kind": kind, "status": status, "hex": data.hex(), "detail": detail}


def details_wire_bytes(details: str) -> int:
    """Bytes of a status message in gRPC's grpc-message trailer (percent-encoded)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in details.encode("utf-8", "surrogatepass"))


DETAILS_LIMIT = 7 << 10  # gRPC clients refuse trailers over 8 KiB (soft limit) or 16 KiB (hard)


class Target:
    """The servicer of a real ``GradwireServer`` (never started), driven in-process."""

    def __init__(self, workdir: Path, real_pools: bool = False, hang_seconds: float = 10.0,
                 rss_cap_mb: float | None = None):
        from ..protos import gradwire_pb2 as pb
        from ..server import servicer as servicer_module
        from ..server.app import GradwireServer
        from ..server.config import ServerConfig
        from ..worker import frames

        self.pb, self.frames = pb, frames
        import dataclasses

        known = {f.name for f in dataclasses.fields(ServerConfig)}
        extra = {"data_roots": str(workdir)} if "data_roots" in known else {}  # job seeds' dataset files
        self.config = ServerConfig(host="127.0.0.1", port=0, job_dir=str(workdir / "jobs"),
                                   **{k: v for k, v in FUZZ_LIMITS.items() if k in known}, **extra)
        self.server = GradwireServer(self.config)
        self.servicer = self.server.servicer
        if not real_pools:
            self.servicer.compute_pool = self.servicer.light_pool = _Inline()
        self.jobs, self.admission = self.servicer.jobs, self.servicer.admission
        service = pb.DESCRIPTOR.services_by_name["Gradwire"]
        self.decoders = {m.name: frames.lenient_decoder(getattr(pb, m.input_type.name))
                         for m in service.methods if m.name in KINDS}
        self.loop = asyncio.new_event_loop()
        self.hang_seconds, self.rss_cap_mb = hang_seconds, rss_cap_mb
        self.small_message = frames.SMALL_MESSAGE

        # instrumentation only: which exception each failure was, and errors logged
        self.failures: list[BaseException] = []
        original = servicer_module.status_for

        def recording_status_for(exc):
            self.failures.append(exc)
            return original(exc)

        servicer_module.status_for = recording_status_for
        self.logged: list[logging.LogRecord] = []
        capture = logging.Handler(logging.ERROR)
        capture.emit = self.logged.append
        server_log = logging.getLogger("gradwire.server")
        server_log.addHandler(capture)
        server_log.setLevel(logging.ERROR)
        server_log.propagate = False
        self.thread_errors: list[str] = []  # exceptions that ended a thread (a job's)

        def on_thread_error(args):
            self.thread_errors.append("".join(traceback.format_exception(args.exc_value)))

        threading.excepthook = on_thread_error

        self.statuses: collections.Counter = collections.Counter()
        self.exceptions: collections.Counter = collections.Counter()
        self.slowest: list[tuple[float, str, str, str]] = []
        self.details_too_long = 0
        self.executions = 0
        self.session_id = b""
        self._base = None
        self._refresh()

    # ---------------------------------------------------------------- live state the seeds name

    def _refresh(self) -> None:
        """The base graph registered and a live session of it (evicted by other inputs' ones)."""
        self._base = self._base or base_example()
        reg = self.servicer.graphs.register(self._base.graph)
        try:
            self.servicer.sessions.get(self.session_id.decode())
        except Exception:  # noqa: BLE001 - evicted or not made yet
            session = self.servicer.sessions.create(reg, self._base.params)
            self.session_id = session.session_id.encode()
        assert len(self.session_id) == len(SESSION_PLACEHOLDER)

    # ---------------------------------------------------------------- one input

    def run(self, data: bytes) -> str:
        """The status name ("OK" for an answer); ``Violation`` when the property breaks."""
        self.executions += 1
        if self.executions % 64 == 0:
            self._refresh()
        kind, framed, messages = unpack(data)
        messages = [m.replace(SESSION_PLACEHOLDER, self.session_id) for m in messages]
        del self.failures[:], self.logged[:], self.thread_errors[:]
        decode = self.decoders[kind]
        self.frames.SMALL_MESSAGE = 0 if framed else self.small_message
        try:
            requests = [decode(m) for m in messages]  # per message, as gRPC deserializes them
        finally:
            self.frames.SMALL_MESSAGE = self.small_message
        handler = getattr(self.servicer, kind)
        context = _Context(COMPUTE_DEADLINE if kind == "Compute" else None)
        call = handler(_stream(requests), context) if kind in STREAMING else handler(requests[0], context)
        started = time.monotonic()
        response, status, details = None, "OK", ""
        try:
            response = self.loop.run_until_complete(asyncio.wait_for(call, self.hang_seconds))
        except _Aborted as aborted:
            status, details = aborted.code.name, aborted.details
        except TimeoutError:
            if time.monotonic() - started >= self.hang_seconds:
                raise Violation("hang", data, kind, "-", f"no answer within {self.hang_seconds:g} s") from None
            raise Violation("escaped", data, kind, "UNKNOWN", traceback.format_exc()) from None
        except Exception:  # noqa: BLE001 - gRPC answers an exception escaping a handler with UNKNOWN
            raise Violation("escaped", data, kind, "UNKNOWN", traceback.format_exc()) from None
        elapsed = time.monotonic() - started
        self.last_details = details
        if elapsed > self.hang_seconds:  # inline work cannot be interrupted by wait_for: judged after
            raise Violation("hang", data, kind, status, f"answered after {elapsed:.1f} s (limit {self.hang_seconds:g} s)")

        if response is not None:
            try:
                self.frames.serialize(response)
            except Exception:  # noqa: BLE001 - a failing serializer is INTERNAL in gRPC
                raise Violation("serialize", data, kind, "INTERNAL", traceback.format_exc()) from None
        if status in ("INTERNAL", "UNKNOWN"):
            raise Violation("status", data, kind, status, details + "\n" + self._traceback())
        if any(isinstance(exc, MemoryError) for exc in self.failures):
            raise Violation("oom", data, kind, status, self._traceback())
        if not isinstance(details, str):
            raise Violation("details", data, kind, status, f"status details of type {type(details).__name__}")
        if details_wire_bytes(details) > DETAILS_LIMIT:  # it would not reach a gRPC client
            self.details_too_long += 1
            raise Violation("details", data, kind, status,
                            f"status message of {details_wire_bytes(details)} bytes on the wire (percent-encoded); "
                            f"over {DETAILS_LIMIT} a gRPC client gets RESOURCE_EXHAUSTED 'Stream removed' instead: "
                            f"{details[:300]!r}...")
        if kind == "Compute" and response is not None and response.summary.info.shard_count > 1:
            self._compare_one_shard(data, messages[0], response)
        if kind == "SubmitJob" and response is not None:
            self._finish_job(response.job_id, data)
        self._check_released(data, kind, status)
        self._check_job_errors(data, kind, status)
        self.statuses[f"{kind} {status}"] += 1
        if self.failures:
            self.exceptions[f"{status} {type(self.failures[-1]).__name__}"] += 1
        if self.rss_cap_mb is not None:
            peak = peak_rss_mb()
            if peak > self.rss_cap_mb:
                raise Violation("memory", data, kind, status, f"peak RSS {peak:.0f} MB > cap {self.rss_cap_mb:.0f} MB")
        if len(self.slowest) < 5 or elapsed > self.slowest[-1][0]:
            self.slowest = sorted(self.slowest + [(elapsed, kind, status, data.hex()[:4096])], reverse=True)[:5]
        return status

    def _compare_one_shard(self, data: bytes, raw: bytes, sharded) -> None:
        """A differential check: a sharded answer must be the one-shard answer (same tensors,
        dtypes and shapes exactly; values within a loose tolerance where all are tame)."""
        request = self.pb.ComputeRequest.FromString(raw)
        request.header.shards = 1
        try:
            single = self.loop.run_until_complete(self.servicer.Compute(
                self.decoders["Compute"](request.SerializeToString()), _Context(COMPUTE_DEADLINE)))
        except _Aborted as aborted:
            if aborted.code.name in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
                return  # one shard of the whole batch may take longer than the shards did
            raise Violation("differential", data, "Compute", "OK",
                            f"sharded ({sharded.summary.info.shard_count} shards) answered OK, one shard "
                            f"{aborted.code.name}: {aborted.details}") from None
        mismatch = _differ(sharded, single)
        if mismatch:
            raise Violation("differential", data, "Compute", "OK",
                            f"{sharded.summary.info.shard_count} shards and one shard disagree: {mismatch}")

    def _traceback(self) -> str:
        return "".join("".join(traceback.format_exception(exc)) for exc in self.failures[-1:])

    def _finish_job(self, job_id: str, data: bytes) -> None:
        """Let the job run (at most ``JOB_SECONDS``), cancel it, check it stops, forget it."""
        run = self.jobs.get(job_id)
        thread = next((t for t in self.jobs._threads if t.name == f"job-{job_id}"), None)
        if thread is not None:
            thread.join(JOB_SECONDS)
            if thread.is_alive():
                self.jobs.cancel(job_id)
                thread.join(self.hang_seconds)
                if thread.is_alive():
                    raise Violation("hang", data, "SubmitJob", "OK", f"job {job_id} does not stop when cancelled")
            self.jobs._threads.remove(thread)
        if run.state not in ("done", "failed", "cancelled"):  # its thread died: watchers would wait for ever
            raise Violation("job", data, "SubmitJob", f"job ended {run.state}",
                            "".join(self.thread_errors) or "the job's thread ended without a final state")
        if self.thread_errors:
            raise Violation("job", data, "SubmitJob", "job thread raised", "".join(self.thread_errors))
        with self.jobs._lock:
            self.jobs.jobs.pop(job_id, None)
        shutil.rmtree(run.directory, ignore_errors=True)

    def _check_released(self, data: bytes, kind: str, status: str) -> None:
        in_use = self.admission.memory.in_use
        free_slots = self.admission._slots._value
        if in_use or free_slots != self.admission.max_concurrent:
            raise Violation("leak", data, kind, status,
                            f"after the call {in_use} bytes of the budget and "
                            f"{self.admission.max_concurrent - free_slots} slot(s) are still held")

    def _check_job_errors(self, data: bytes, kind: str, status: str) -> None:
        from ..server.status import status_for

        for record in self.logged:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and "job" in record.getMessage() and status_for(exc).name in ("INTERNAL", "UNKNOWN"):
                raise Violation("job", data, kind, f"job failed: {type(exc).__name__}",
                                "".join(traceback.format_exception(exc)))

    def close(self) -> None:
        self.jobs.stop()
        self.server.stop(0)


def _tensors(response) -> dict:
    import numpy as np

    from ..worker.codec import dtype_from_proto

    out = {}
    for group in ("grads", "input_grads", "outputs"):
        for chunk in getattr(response, group):
            dtype = dtype_from_proto(chunk.dtype, chunk.name).newbyteorder("<")
            out[f"{group}/{chunk.name}"] = np.frombuffer(chunk.data, dtype).reshape(tuple(chunk.shape))
    return out


def _differ(a, b) -> str:
    """What differs between two ComputeResponses ("" if nothing does)."""
    import numpy as np

    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys():
        return f"tensors {sorted(ta)} vs {sorted(tb)}"
    shards = a.summary.info.shard_count
    for name in ta:
        x, y = ta[name], tb[name]
        if name.startswith("outputs/") and x.dtype == y.dtype and x.shape == (shards, *y.shape):
            continue  # by design (shards.combine): a fetched value without a batch dim stacks by shard
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: {x.dtype.name}{list(x.shape)} vs {y.dtype.name}{list(y.shape)}"
        if x.dtype.kind == "f" and x.size:
            tame = np.isfinite(x).all() and np.isfinite(y).all() and max(abs(x).max(), abs(y).max()) < 1e4
            if tame and not np.allclose(x, y, rtol=1e-2, atol=1e-3):
                return f"{name}: values differ by up to {float(abs(x - y).max()):.3g}"
    la, lb = a.summary.loss, b.summary.loss
    if math.isfinite(la) and math.isfinite(lb) and max(abs(la), abs(lb)) < 1e4 and \
            not math.isclose(la, lb, rel_tol=1e-2, abs_tol=1e-3):
        return f"loss {la} vs {lb}"
    return ""


async def _stream(requests):
    for request in requests:
        yield request


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- seeds


def seed_corpus() -> list[tuple[str, bytes]]:
    seeds = corpus()
    seeds += [(f"regression/{name}", bytes.fromhex(h)) for name, h, _ in REGRESSIONS]
    seeds += [(f"known-bug/{bug['name']}/{label}", bytes.fromhex(h)) for bug in KNOWN_BUGS for label, h in bug["inputs"]]
    return [(name, data) for name, data in seeds if len(data) <= MAX_LEN]


def _pb():
    from ..protos import gradwire_pb2 as pb

    return pb


def request_class(kind: str):
    pb = _pb()
    return {"Compute": pb.ComputeRequest, "RegisterGraph": pb.RegisterGraphRequest,
            "CreateSession": pb.SessionRequest, "SubmitJob": pb.JobRequest}[kind]


class Example:
    """A graph and data that fit it: the stuff of good requests."""

    def __init__(self, name: str, graph, params: dict, batch: dict):
        from ..worker.codec import graph_to_proto

        self.name, self.params, self.batch = name, params, batch
        self.graph = graph_to_proto(graph.graph_def) if hasattr(graph, "graph_def") else graph


def _chunks(tensors: dict, pieces: int = 1) -> list:
    """``TensorChunk``s of whole tensors (or each cut into ``pieces`` pieces)."""
    import numpy as np

    from ..worker.codec import tensor_chunks

    out = []
    for name, array in tensors.items():
        array = np.asarray(array)
        size = max(1, array.nbytes)
        out += list(tensor_chunks(name, array, max(1, -(-size // pieces))))
    return out


def base_example() -> Example:
    """The bad-request corpus' good request: sum(sigmoid(relu(x*w + b))), batch_reduction sum."""
    import numpy as np

    import gradwire as gw

    g = gw.Graph()
    x, w, b = g.input("x", (None, 3)), g.param("w", (3,)), g.param("b", (3,))
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(gw.add(gw.mul(x, w, name="mul"), b, name="add"), name="relu")),
                      name="loss"), batch_reduction="sum")
    return Example("base", g, {"w": np.array([0.5, -1.0, 2.0], np.float32), "b": np.array([0.1, 0.2, -0.3], np.float32)},
                   {"x": np.arange(12, dtype=np.float32).reshape(4, 3) / 10})


def examples() -> list[Example]:
    """Good graphs over the op table: every op at least once, attrs, constants, outputs."""
    import numpy as np

    import gradwire as gw

    rng = np.random.default_rng(0)

    def f(*shape, dtype="float32"):
        return rng.standard_normal(shape).astype(dtype)

    out = [base_example()]

    g = gw.Graph()  # softmax cross-entropy on an MLP
    x, y = g.input("x", (None, 4)), g.input("y", (None,), "int64")
    w1, b1, w2 = g.param("w1", (4, 5)), g.param("b1", (5,)), g.param("w2", (5, 3))
    g.set_loss(gw.softmax_cross_entropy(gw.matmul(gw.tanh(gw.add(gw.matmul(x, w1), b1)), w2), y))
    out.append(Example("mlp", g, {"w1": f(4, 5), "b1": f(5), "w2": f(5, 3)}, {"x": f(6, 4), "y": np.array([0, 1, 2, 0, 1, 2])}))

    g = gw.Graph()  # where, bool masks, maximum/minimum, abs, neg
    x, m, w = g.input("x", (None, 3)), g.input("m", (None, 3), "bool"), g.param("w", (3,))
    g.set_loss(gw.mean(gw.where(m, gw.maximum(x * w, gw.neg(x)), gw.abs(gw.minimum(x, w)))))
    out.append(Example("where", g, {"w": f(3)}, {"x": f(4, 3), "m": rng.integers(0, 2, (4, 3)).astype(bool)}))

    g = gw.Graph()  # concat, slice, mse, sigmoid, float64
    x, y = g.input("x", (None, 6), "float64"), g.input("y", (None, 6), "float64")
    w, v, b = g.param("w", (6, 4), "float64"), g.param("v", (6, 4), "float64"), g.param("b", (6,), "float64")
    h = gw.concat(x @ w, gw.tanh(x @ v), axis=1)
    g.set_loss(gw.mse(gw.slice(h, starts=[1], ends=[7], axes=[1]) * gw.sigmoid(b), y))
    out.append(Example("mse", g, {"w": f(6, 4, dtype="float64"), "v": f(6, 4, dtype="float64"), "b": f(6, dtype="float64")},
                       {"x": f(5, 6, dtype="float64"), "y": f(5, 6, dtype="float64")}))

    g = gw.Graph()  # reductions with axes and keepdims, softmax, log_softmax, max
    x, w = g.input("x", (None, 2, 3)), g.param("w", (2, 3))
    s = gw.softmax(x * w, axis=2)
    r = gw.sum(gw.mean(gw.log_softmax(s, axis=1), axis=[1, 2], keepdims=True), axis=None)
    g.set_loss(gw.add(r, gw.max(gw.square(w))))
    out.append(Example("reduce", g, {"w": f(2, 3)}, {"x": f(3, 2, 3)}))

    g = gw.Graph()  # transpose, reshape, broadcast_to, pow, exp, log, sqrt, div, sub
    x, w = g.input("x", (None, 4)), g.param("w", (4, 2))
    t = gw.transpose(gw.reshape(x @ w, shape=[-1, 2, 1]), perm=[0, 2, 1])
    p = gw.pow(gw.sqrt(gw.exp(gw.broadcast_to(t, shape=[3, 1, 2]))), exponent=2.0)
    g.set_loss(gw.mean(gw.log(gw.div(gw.sub(p, gw.neg(p)), p))))
    out.append(Example("shape", g, {"w": f(4, 2)}, {"x": f(3, 4)}))

    g = gw.Graph()  # binary cross-entropy with logits, a constant, fetched outputs, input grads
    x, y, w = g.input("x", (None, 3)), g.input("y", (None,)), g.param("w", (3,))
    c = g.const(np.array([1.0, 2.0, 3.0], np.float32), name="c")
    logits = gw.sum(x * w * c, axis=1)
    g.set_loss(gw.binary_cross_entropy_with_logits(logits, y))
    g.fetch(logits)
    out.append(Example("bce", g, {"w": f(3)}, {"x": f(4, 3), "y": np.array([0, 1, 1, 0], np.float32)}))

    g = gw.Graph()  # no batch dimension at all, int32 data, sum reduction
    x, w = g.input("x", (2, 3)), g.param("w", (3, 2))
    g.set_loss(gw.sum(gw.relu(x @ w)), batch_reduction="sum")
    out.append(Example("static", g, {"w": f(3, 2)}, {"x": f(2, 3)}))

    g = gw.Graph()  # a broadcast that grows with the batch: (B, 1) + (1, 64)
    a, b = g.input("a", (None, 1)), g.param("b", (1, 64))
    g.set_loss(gw.sum(gw.add(a, b, name="outer")), batch_reduction="sum")
    out.append(Example("outer", g, {"b": f(1, 64)}, {"a": f(8, 1)}))
    return out


def _bad_request_module():
    """tests/test_bad_requests.py of the checkout, loaded by path (test modules cannot import
    each other); None outside a checkout."""
    path = Path(__file__).resolve().parent.parent / "tests" / "test_bad_requests.py"
    if not path.is_file():
        return None
    name = "_gradwire_fuzz_bad_requests"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - a broken test file must not stop the fuzzer
        del sys.modules[name]
        traceback.print_exc()
        return None
    return module


SEED_BUILD_SECONDS = 0.5
SKIPPED_CASES: dict[str, str] = {}  # bad-request cases left out of the last corpus(), and why


class _SlowSeed(Exception):
    pass


def _build_quickly(build):
    """``build()``, interrupted (``_SlowSeed``) after SEED_BUILD_SECONDS when on the main thread."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return build()

    def on_alarm(signum, frame):
        raise _SlowSeed

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, SEED_BUILD_SECONDS)
    try:
        return build()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_METHOD_KINDS = {"ValueAndGrad": "Compute", "Compute": "Compute", "RegisterGraph": "RegisterGraph",
                 "CreateSession": "CreateSession", "UpdateSession": "CreateSession", "SubmitJob": "SubmitJob"}


def corpus() -> list[tuple[str, bytes]]:
    """(name, input) of every seed: the bad-request corpus, then good requests of each kind."""
    pb = _pb()
    out: list[tuple[str, bytes]] = []
    convert = Mutator(random.Random(0))
    bad = _bad_request_module()
    SKIPPED_CASES.clear()
    for case in (bad.CASES if bad is not None else []):
        kind = _METHOD_KINDS.get(case.method)
        if kind is None:
            continue
        if getattr(case, "with_stub", False):
            SKIPPED_CASES[case.id] = "needs a live server's state"
            continue
        try:
            built = _build_quickly(case.build)
        except _SlowSeed:  # a request of many MB (over MAX_LEN anyway): not worth seconds at every start
            SKIPPED_CASES[case.id] = f"builds for more than {SEED_BUILD_SECONDS:g} s"
            continue
        except Exception as exc:  # noqa: BLE001
            SKIPPED_CASES[case.id] = f"build failed: {type(exc).__name__}: {exc}"
            continue
        messages = list(built) if isinstance(built, list) else [built]
        raw = [m if isinstance(m, (bytes, bytearray)) else m.SerializeToString() for m in messages]
        if kind == "Compute":
            if len(raw) == 1:
                out.append((f"bad/{case.id}", pack("Compute", raw)))
            if all(not isinstance(m, (bytes, bytearray)) for m in messages):
                for other in ("SubmitJob", "CreateSession"):  # the same faults in the streams' messages
                    k, msgs = convert.convert("Compute", messages, other)
                    out.append((f"bad/{case.id}/as-{other}", pack(k, [m.SerializeToString() for m in msgs])))
        else:
            out.append((f"bad/{case.id}", pack(kind, raw)))
    for ex in examples():
        compute = pb.ComputeRequest(header=pb.ComputeHeader(graph=ex.graph), params=_chunks(ex.params),
                                    batch=_chunks(ex.batch))
        out.append((f"good/{ex.name}/compute", pack("Compute", [compute.SerializeToString()])))
        out.append((f"good/{ex.name}/compute-framed", pack("Compute", [compute.SerializeToString()], framed=True)))
        pieces = pb.ComputeRequest(header=pb.ComputeHeader(graph=ex.graph, shards=3, fetch=list(ex.graph.outputs),
                                                           wrt=[p.name for p in ex.graph.params][:1],
                                                           input_grads=[i.name for i in ex.graph.inputs][:1]),
                                   params=_chunks(ex.params, 2), batch=_chunks(ex.batch, 3))
        out.append((f"good/{ex.name}/compute-pieces", pack("Compute", [pieces.SerializeToString()], framed=True)))
        out.append((f"good/{ex.name}/register", pack("RegisterGraph", [
            pb.RegisterGraphRequest(graph=ex.graph).SerializeToString()])))
        session = [pb.SessionRequest(header=pb.SessionHeader(graph=ex.graph)),
                   pb.SessionRequest(params=_chunks(ex.params, 2))]
        out.append((f"good/{ex.name}/session", pack("CreateSession", [m.SerializeToString() for m in session])))
        rows = next(iter(ex.batch.values())).shape[0] if ex.graph.inputs[0].spec.shape[0] == -1 else 0
        if rows:
            job = [pb.JobRequest(header=pb.JobHeader(graph=ex.graph, optimizer_json=OPTIMIZERS[len(out) % 4],
                                                     batch_size=2, epochs=2, seed=7, checkpoint_every=2, name=ex.name),
                                 params=_chunks(ex.params)),
                   pb.JobRequest(data=_chunks(ex.batch, 2))]
            out.append((f"good/{ex.name}/job", pack("SubmitJob", [m.SerializeToString() for m in job])))
    base = base_example()
    from ..worker.codec import graph_id_of_proto

    base_id = graph_id_of_proto(base.graph)
    by_id = pb.ComputeRequest(header=pb.ComputeHeader(graph_id=base_id), params=_chunks(base.params),
                              batch=_chunks(base.batch))
    out.append(("good/base/compute-by-id", pack("Compute", [by_id.SerializeToString()])))
    in_session = pb.ComputeRequest(header=pb.ComputeHeader(session_id=SESSION_PLACEHOLDER.decode()),
                                   batch=_chunks(base.batch))
    out.append(("good/base/compute-in-session", pack("Compute", [in_session.SerializeToString()])))
    import numpy as np

    large = pb.ComputeRequest(header=pb.ComputeHeader(graph=base.graph), params=_chunks(base.params),
                              batch=_chunks({"x": np.linspace(-1, 1, 6000 * 3, dtype=np.float32).reshape(6000, 3)}))
    out.append(("good/base/compute-over-64KiB", pack("Compute", [large.SerializeToString()])))
    for path in DATA_PATHS:
        job = pb.JobRequest(header=pb.JobHeader(graph_id=base_id, optimizer_json=OPTIMIZERS[0], batch_size=3,
                                                epochs=1, data_path=path), params=_chunks(base.params))
        out.append((f"good/base/job-data-path-{path}", pack("SubmitJob", [job.SerializeToString()])))
    out.append(("empty-compute", pack("Compute", [b""])))
    out.append(("empty-stream", pack("SubmitJob", [])))
    out.append(("not-protobuf", pack("CreateSession", [b"\xff\xff\xff\xff"])))
    return out


def make_datasets(workdir: Path) -> None:
    """The files that job seeds name by relative path (a worker runs in ``workdir``): a good
    .npz and .npy directory for the base graph, and files as a disk or an upload leaves them
    broken (empty, truncated, a bad CRC, a member that is no .npy, a bare .npy, a FIFO)."""
    import io
    import zipfile

    import numpy as np

    x = np.arange(24, dtype=np.float32).reshape(8, 3) / 10
    np.savez(workdir / "data.npz", x=x)
    good = (workdir / "data.npz").read_bytes()
    (workdir / "datadir").mkdir(exist_ok=True)
    np.save(workdir / "datadir" / "x.npy", x)
    (workdir / "objdir").mkdir(exist_ok=True)
    np.save(workdir / "objdir" / "x.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (workdir / "emptydir").mkdir(exist_ok=True)
    (workdir / "emptydir" / "x.npy").write_bytes(b"")
    (workdir / "truncdir").mkdir(exist_ok=True)
    (workdir / "truncdir" / "x.npy").write_bytes((workdir / "datadir" / "x.npy").read_bytes()[:-10])
    (workdir / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(60))
    (workdir / "empty.npz").write_bytes(b"")
    (workdir / "trunc.npz").write_bytes(good[: len(good) // 2])
    crc = bytearray(good)
    crc[good.find(b"\x93NUMPY") + 140] ^= 0xFF
    (workdir / "crc.npz").write_bytes(bytes(crc))
    with zipfile.ZipFile(workdir / "notnpy.npz", "w") as archive:
        archive.writestr("x.npy", b"not an array")
    buffer = io.BytesIO()
    np.save(buffer, x)
    (workdir / "plain.npy").write_bytes(buffer.getvalue())
    if not (workdir / "fifo").exists():
        os.mkfifo(workdir / "fifo")


DATA_PATHS = ("data.npz", "datadir", "fifo", "objdir", "emptydir", "truncdir", "garbage.npz", "empty.npz",
              "trunc.npz", "crc.npz", "notnpy.npz", "plain.npy", "nothing-here.npz", "/dev/null", ".")


# ---------------------------------------------------------------- the structured mutator


OPTIMIZERS = [
    '{"name": "sgd", "lr": 0.1}', '{"name": "adam", "lr": 0.01, "betas": [0.9, 0.999]}',
    '{"name": "adamw", "lr": 0.001, "weight_decay": 0.1}', '{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": true}',
]
_JSON_VARIANTS = OPTIMIZERS + [
    "", "{}", "[]", "1", "null", '"sgd"', '{"name": 1}', '{"name": "sgd"}', '{"name": "sgd", "lr": "x"}',
    '{"name": "sgd", "lr": 1e999}', '{"name": "sgd", "lr": NaN}', '{"name": "sgd", "lr": -Infinity}',
    '{"name": "adam", "lr": 1, "betas": [1, 2]}', '{"name": "adam", "lr": 1, "betas": [0.5]}',
    '{"name": "adam", "lr": 1, "betas": "ab"}', '{"name": "SGD", "lr": -1}', '{"name": "sgd", "lr": 0, "momentum": -1}',
    '{"name": "adam", "lr": 1e308, "eps": 0}', '{"name": "sgd", "lr": true}', '{"name": "sgd", "lr": 0.1, "nesterov": true}',
    '{"name": "sgd", "lr": 0.1, "extra": 1}', '{"name": "sgd", "lr": 1' + "0" * 400 + '}', "[" * 3000, "{" * 50,
    '{"name": "sgd", "lr": 0.1', '{"name": "adamw", "lr": 0.1, "weight_decay": -0.5}', "\ud800", '{"name": "\\ud800"}',
]
_INTERESTING_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 16, 64, 255, 256, 4096, 32767, 32768, 65536, 2**31 - 1, 2**31,
                     2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, -1, -2, -3, -255, -2**31, -2**63]
_INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 5e-324, 1e30, 1e308, -1e308, float("nan"),
                       float("inf"), float("-inf"), 3.5, -7.25]
_STRINGS = ["", "mean", "sum", "median", "x", "w", "b", "y", "loss", "relu", "add", "mul", "g-" + "0" * 32,
            SESSION_PLACEHOLDER.decode(), "s-nope", "\x00", "a\x00b", "é", "../x", "axis", "keepdims", "shape",
            "perm", "starts", "ends", "axes", "steps", "exponent", "unknown_attr", "/proc/self/mem", "/"]
_RANGES = {  # field cpp types -> (min, max)
    1: (-2**31, 2**31 - 1), 2: (-2**63, 2**63 - 1), 3: (0, 2**32 - 1), 4: (0, 2**64 - 1), 8: (-2**31, 2**31 - 1)}


class Mutator:
    """Field-level mutations of parsed request messages (see the module docstring)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.names: list[str] = []
        self.graphs: dict[str, object] = {}  # graph id -> graph, of graphs seen inline (for by-id requests)
        self.op = ""
        self.applied: collections.Counter = collections.Counter()  # mutation -> times it ran
        self.failed: collections.Counter = collections.Counter()  # mutation -> times it raised (a bug here)

    # ------------------------------------------------------------ entry points

    def mutate(self, data: bytes, max_size: int, byte_mutate=None) -> bytes:
        r = self.rng
        if r.random() < 0.2 or len(data) < 2:
            return byte_mutate(data, max_size) if byte_mutate is not None else self._bytes(data, max_size)
        try:
            kind, framed, raw = unpack(data)
            cls = request_class(kind)
            messages = [cls.FromString(m) for m in raw]
        except Exception:  # noqa: BLE001 - not (any more) a well-formed input: mutate its bytes
            return byte_mutate(data, max_size) if byte_mutate is not None else self._bytes(data, max_size)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):
            try:
                kind, framed, messages = self._one(kind, framed, messages)
                self.applied[self.op] += 1
            except (ValueError, TypeError, IndexError, KeyError) as exc:  # a value out of a field's range, ...
                self.failed[f"{self.op} {type(exc).__name__}"] += 1
        out = pack(kind, [m.SerializeToString() for m in messages], framed)
        if len(out) > max_size:
            return self._bytes(data, max_size)
        return out

    def crossover(self, data1: bytes, data2: bytes, max_size: int) -> bytes:
        """data1's header (graph) with data2's tensors, as data1's kind."""
        try:
            kind1, framed, raw1 = unpack(data1)
            kind2, _, raw2 = unpack(data2)
            m1 = [request_class(kind1).FromString(m) for m in raw1]
            m2 = [request_class(kind2).FromString(m) for m in raw2]
            _, m2 = self.convert(kind2, m2, kind1)
            if kind1 == "RegisterGraph" or not m1 or not m2:
                out = pack(kind1, [m.SerializeToString() for m in (m2 if self.rng.random() < 0.5 else m1)], framed)
            else:
                head = type(m1[0])()
                head.CopyFrom(m1[0])
                for field in _tensor_fields(head):
                    head.ClearField(field)
                rest = []
                for m in m2:
                    m.ClearField("header")
                    rest.append(m)
                out = pack(kind1, [m.SerializeToString() for m in [head] + rest], framed)
        except Exception:  # noqa: BLE001
            cut1, cut2 = self.rng.randint(0, len(data1)), self.rng.randint(0, len(data2))
            out = data1[:cut1] + data2[cut2:]
        return out[:max_size]

    # ------------------------------------------------------------ one mutation

    def _one(self, kind, framed, messages):
        r = self.rng
        self.names = _strings_in(messages)
        self._remember_graphs(messages)
        op = self.op = r.choices(("field", "graph", "conform", "tensor", "header", "stream", "convert", "framed"),
                                 (34, 22, 10, 14, 10, 5, 3, 2))[0]
        if not messages:
            messages = [request_class(kind)()]
        if op == "field":
            self._field(r.choice(messages))
        elif op == "graph":
            graph = _graph_of(r.choice(messages))
            if graph is None:
                self._field(r.choice(messages))
            else:
                self._graph(graph)
                if r.random() < 0.5:
                    messages = self.conform(kind, messages)
        elif op == "conform":
            messages = self.conform(kind, messages)
        elif op == "tensor":
            self._tensor(messages)
        elif op == "header":
            self._header(kind, messages)
        elif op == "stream":
            messages = self._stream(kind, messages)
        elif op == "convert":
            kind, messages = self.convert(kind, messages, r.choice([k for k in KINDS if k != kind]))
        else:
            framed = not framed
        return kind, framed, messages

    # ------------------------------------------------------------ reflective, any field

    def _field(self, msg, depth: int = 0) -> None:
        r = self.rng
        fields = msg.DESCRIPTOR.fields
        if not fields:
            return
        present = [f for f in fields if _present(msg, f)]
        f = r.choice(present) if present and r.random() < 0.7 else r.choice(fields)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            self._map(msg, f)
        elif f.is_repeated:
            self._repeated(msg, f, depth)
        elif f.message_type is not None:
            if _present(msg, f) and r.random() < 0.85 and depth < 8:
                self._field(getattr(msg, f.name), depth + 1)
            elif r.random() < 0.4:
                msg.ClearField(f.name)
            else:
                getattr(msg, f.name).SetInParent()
                self._field(getattr(msg, f.name), depth + 1)
        else:
            setattr(msg, f.name, self._scalar(f, getattr(msg, f.name), msg))

    def _repeated(self, msg, f, depth: int) -> None:
        r = self.rng
        items = getattr(msg, f.name)
        n = len(items)
        choice = r.random()
        if f.message_type is not None:
            if n and choice < 0.55 and depth < 8:
                self._field(items[r.randrange(n)], depth + 1)
            elif n and choice < 0.7:
                del items[r.randrange(n)]
            elif n and choice < 0.82:
                items.add().CopyFrom(items[r.randrange(n)])
            elif n > 1 and choice < 0.9:
                copies = [type(i)() for i in items]
                for copy, item in zip(copies, items):
                    copy.CopyFrom(item)
                r.shuffle(copies)
                del items[:]
                for copy in copies:
                    items.add().CopyFrom(copy)
            else:
                self._field(items.add(), depth + 1)
        else:
            if n and choice < 0.4:
                items[r.randrange(n)] = self._scalar(f, items[r.randrange(n)], msg)
            elif n and choice < 0.55:
                del items[r.randrange(n)]
            elif choice < 0.9:
                items.insert(r.randint(0, n), self._scalar(f, items[0] if n else None, msg))
            else:
                del items[:]

    def _map(self, msg, f) -> None:
        r = self.rng
        entries = getattr(msg, f.name)
        keys = list(entries.keys())
        if keys and r.random() < 0.3:
            del entries[r.choice(keys)]
            return
        key = r.choice(keys) if keys and r.random() < 0.5 else self._string("", msg)
        self._attr_value(entries[key], key)

    def _scalar(self, f, current, msg):
        r = self.rng
        t = f.cpp_type
        if t == f.CPPTYPE_BOOL:
            return not current
        if t in (f.CPPTYPE_DOUBLE, f.CPPTYPE_FLOAT):
            return r.choice(_INTERESTING_FLOATS) if r.random() < 0.7 else r.uniform(-10, 10)
        if t == f.CPPTYPE_STRING:
            if f.type == f.TYPE_BYTES:
                return self._data(msg, current or b"")
            if f.name == "optimizer_json":
                return self._json(current)
            return self._string(current or "", msg)
        low, high = _RANGES.get(t, (-2**31, 2**31 - 1))
        pick = r.random()
        if f.name == "offset" and pick < 0.5:
            return r.randint(0, 64)
        if f.name == "shape" and pick < 0.6:
            value = r.choice([-1, -1, 0, 1, 1, 2, 3, 4, 5, 6, 8])
        elif pick < 0.5:
            value = r.choice(_INTERESTING_INTS)
        elif pick < 0.8 and isinstance(current, int):
            value = current + r.choice((-1, 1, -2, 2))
        else:
            value = r.randint(-4, 16)
        return min(max(value, low), high)

    def _string(self, current: str, msg) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.45 and self.names:
            return r.choice(self.names)
        if pick < 0.6:
            from ..worker.ops import OPS

            return r.choice(list(OPS))
        if pick < 0.8:
            return r.choice(_STRINGS) if r.random() < 0.8 else r.choice(DATA_PATHS)
        if pick < 0.87:
            return r.choice("xé\x00") * r.choice((100, 2000, 4000, 9000))
        if not current:
            return r.choice(_STRINGS)
        if pick < 0.94:
            return current + r.choice(("_", "0", "x", "'", " ", "é"))
        return current[: r.randrange(len(current))]

    def _json(self, current: str) -> str:
        r = self.rng
        try:
            config = json.loads(current)
        except Exception:  # noqa: BLE001
            config = None
        if not isinstance(config, dict) or r.random() < 0.4:
            return r.choice(_JSON_VARIANTS)
        key = r.choice(["name", "lr", "momentum", "weight_decay", "nesterov", "betas", "eps", "extra"])
        config[key] = r.choice([0, 1, -1, 0.5, 1e-8, 1e300, True, None, "sgd", "adam", [0.9, 0.99], [1.5, 0],
                                [], {}, 2**70, "x" * 10])
        return json.dumps(config)

    def _attr_value(self, value, key: str) -> None:
        r = self.rng
        kind = r.choice(("i", "f", "b", "s", "ints", "none"))
        if kind == "i":
            value.i = r.choice([-3, -2, -1, 0, 1, 2, 3, 2**31, 2**62, -2**63])
        elif kind == "f":
            value.f = r.choice(_INTERESTING_FLOATS)
        elif kind == "b":
            value.b = r.random() < 0.5
        elif kind == "s":
            value.s = r.choice(_STRINGS)
        elif kind == "ints":
            value.ints.values[:] = [r.choice([-2, -1, 0, 1, 2, 3, 4, 6, 2**31, 2**62]) for _ in range(r.choice((0, 1, 2, 3, 4, 70)))]
        else:
            value.Clear()

    # ------------------------------------------------------------ tensor bytes

    def _data(self, msg, current: bytes) -> bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.4 and hasattr(msg, "shape") and hasattr(msg, "dtype"):
            fitted = _random_bytes(self.rng, msg.dtype, list(msg.shape))
            if fitted is not None:
                return fitted
        if pick < 0.55:
            return current[: r.randint(0, len(current))]
        if pick < 0.7:
            return current + bytes(r.choice((1, 2, 4, 8)))
        if pick < 0.85 and current:
            b = bytearray(current)
            i = r.randrange(len(b))
            b[i] = r.choice((0, 1, 2, 0x7F, 0x80, 0xFF))
            return bytes(b)
        pattern = r.choice((b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x02", b"\x01\x00\x00\x00"))
        return pattern * max(1, len(current) // len(pattern))

    def _tensor(self, messages) -> None:
        """A tensor's dtype or shape changed (its bytes refitted, mostly), or a tensor cut in pieces."""
        r = self.rng
        chunks = [(m, field, i) for m in messages for field in _tensor_fields(m) for i in range(len(getattr(m, field)))]
        if not chunks:
            return
        m, field, i = r.choice(chunks)
        chunk = getattr(m, field)[i]
        pick = r.random()
        if pick < 0.3:
            chunk.dtype = r.choice((0, 1, 2, 3, 4, 5, 5, 99))
        elif pick < 0.65:
            shape = list(chunk.shape)
            if shape and r.random() < 0.6:
                shape[r.randrange(len(shape))] = r.choice([0, 1, 2, 3, 5, 8, 64, -1, -2, 2**31, 2**40, 2**62])
            elif r.random() < 0.5:
                shape.insert(r.randint(0, len(shape)), r.choice([0, 1, 2, 3]))
            elif shape:
                del shape[r.randrange(len(shape))]
            chunk.shape[:] = shape
        elif pick < 0.85 and len(chunk.data) > 1 and chunk.offset == 0:  # cut into two pieces
            cut = r.randrange(1, len(chunk.data))
            data = chunk.data
            second = getattr(m, field).add(name=chunk.name, offset=cut + r.choice((0, 0, 0, 1, -1)), data=data[cut:])
            chunk.data = data[:cut]
            if r.random() < 0.3:
                second.dtype, second.shape[:] = chunk.dtype, list(chunk.shape)
            return
        else:
            chunk.name = self._string(chunk.name, chunk)
        if r.random() < 0.75:
            fitted = _random_bytes(self.rng, chunk.dtype, list(chunk.shape))
            if fitted is not None:
                chunk.data = fitted

    # ------------------------------------------------------------ graphs

    def _graph(self, graph) -> None:
        from ..worker.ops import OPS

        r = self.rng
        values = [s.name for s in graph.inputs] + [s.name for s in graph.params] + \
                 [c.name for c in graph.constants] + [n.name for n in graph.nodes]
        pick = r.choice(("add", "add", "rewire", "op", "attr", "attr", "spec", "spec", "constant", "loss",
                         "outputs", "reduction", "delete", "rename"))
        if pick == "add" or not graph.nodes and pick in ("rewire", "op", "attr", "delete", "rename"):
            name = r.choice(list(OPS))
            op = OPS[name]
            arity = op.arity if op.arity is not None else r.randint(1, 4)
            node = graph.nodes.add(name=f"n{len(graph.nodes)}_{r.randrange(1000)}", op=name,
                                   inputs=[r.choice(values or ["x"]) for _ in range(arity)])
            for key, attr in op.attrs.items():
                if attr.required or r.random() < 0.5:
                    _plausible_attr(r, node.attrs[key], attr.kind, key)
            if r.random() < 0.5:  # make it the loss, through a sum
                total = graph.nodes.add(name=f"total{len(graph.nodes)}", op=r.choice(("sum", "mean")), inputs=[node.name])
                graph.loss = total.name
            else:
                graph.outputs.append(node.name) if r.random() < 0.2 else None
            if len(graph.nodes) > 1 and r.random() < 0.3:  # not necessarily at the end
                copies = [type(n)() for n in graph.nodes]
                for copy, n in zip(copies, graph.nodes):
                    copy.CopyFrom(n)
                copies.insert(r.randrange(len(copies)), copies.pop())
                del graph.nodes[:]
                for copy in copies:
                    graph.nodes.add().CopyFrom(copy)
        elif pick == "rewire":
            node = r.choice(graph.nodes)
            if node.inputs:
                node.inputs[r.randrange(len(node.inputs))] = r.choice(values + ["nowhere"])
            else:
                node.inputs.append(r.choice(values))
        elif pick == "op":
            node = r.choice(graph.nodes)
            node.op = r.choice(list(OPS)) if r.random() < 0.9 else self._string(node.op, node)
            if r.random() < 0.5:
                node.attrs.clear()
            op = OPS.get(node.op)
            for key, attr in (op.attrs.items() if op else ()):
                if attr.required or r.random() < 0.5:
                    _plausible_attr(r, node.attrs[key], attr.kind, key)
        elif pick == "attr":
            node = r.choice(graph.nodes)
            op = OPS.get(node.op)
            keys = list(op.attrs) if op and op.attrs else ["axis"]
            key = r.choice(keys) if r.random() < 0.85 else r.choice(_STRINGS)
            kind = op.attrs[key].kind if op and key in op.attrs and r.random() < 0.8 else r.choice(("int", "ints", "float", "bool", "axes"))
            _plausible_attr(r, node.attrs[key], kind, key)
        elif pick == "spec":
            specs = list(graph.inputs) + list(graph.params)
            if specs:
                spec = r.choice(specs).spec
                if r.random() < 0.3:
                    spec.dtype = r.choice((0, 1, 2, 3, 4, 5, 99))
                else:
                    shape = list(spec.shape)
                    if shape and r.random() < 0.6:
                        shape[r.randrange(len(shape))] = r.choice([-1, 0, 1, 2, 3, 4, 7, -2, 2**31, 2**62])
                    elif r.random() < 0.5 or not shape:
                        shape.insert(r.randint(0, len(shape)), r.choice([-1, 1, 2, 3]))
                    else:
                        del shape[r.randrange(len(shape))]
                    spec.shape[:] = shape
        elif pick == "constant":
            dtype = r.choice((1, 1, 2, 3, 4, 5))
            shape = [r.choice((1, 2, 3)) for _ in range(r.randint(0, 2))]
            c = graph.constants.add(name=r.choice([f"c{len(graph.constants)}"] + values[:3]))
            c.tensor.dtype, c.tensor.shape[:] = dtype, shape
            c.tensor.data = _random_bytes(r, dtype, shape) or b""
        elif pick == "loss":
            graph.loss = r.choice(values + ["", "ghost"])
        elif pick == "outputs":
            graph.outputs.append(r.choice(values + ["ghost"]))
        elif pick == "reduction":
            graph.batch_reduction = r.choice(("", "mean", "sum", "median", "MEAN"))
        elif pick == "delete":
            del graph.nodes[r.randrange(len(graph.nodes))]
        else:
            node = r.choice(graph.nodes)
            node.name = r.choice(values + ["x", "", "fresh"])

    # ------------------------------------------------------------ requests

    def conform(self, kind, messages):
        """The request's tensors rebuilt to fit its graph (random values, a random batch size)."""
        r = self.rng
        pb = _pb()
        head = next((m for m in messages if m.HasField("header")), None) if kind != "RegisterGraph" else None
        if head is None:
            return messages
        graph = _graph_of(head)
        if graph is None and head.header.WhichOneof("graph_ref") == "graph_id":
            graph = self.graphs.get(head.header.graph_id)
        if graph is None:
            return messages
        rows = r.choice((0, 1, 1, 2, 3, 4, 5, 8, 17, 64))
        if kind == "SubmitJob":
            rows = max(rows, 1)
        params = {} if kind == "Compute" and head.header.session_id else _fitting(r, graph.params, rows)
        batch = _fitting(r, graph.inputs, rows)
        pieces = r.choice((1, 1, 1, 2, 3))
        first = type(head)()
        first.header.CopyFrom(head.header)
        out = [first]
        if kind == "SubmitJob":
            first.header.batch_size = r.choice((1, 2, 3, rows))
            first.header.epochs = r.choice((1, 1, 2))
            first.header.data_path = ""
        if kind in STREAMING and r.random() < 0.5:
            out.append(type(head)())
        out[-1].params.extend(_chunks(params, pieces))
        if kind == "Compute":
            out[-1].batch.extend(_chunks(batch, pieces))
        elif kind == "SubmitJob":
            out[-1].data.extend(_chunks(batch, pieces))
        return out

    def _header(self, kind, messages) -> None:
        r = self.rng
        head = None if kind == "RegisterGraph" else next((m for m in messages if m.HasField("header")), None)
        if head is None:
            self._field(r.choice(messages))
            return
        h = head.header
        graph = _graph_of(head)
        names = self.names or ["x"]
        pick = r.random()
        if kind == "Compute" and pick < 0.45:
            target = r.choice(("wrt", "input_grads", "fetch"))
            getattr(h, target).append(r.choice(names))
            if r.random() < 0.3:
                del getattr(h, target)[:]
        elif kind in ("Compute", "SubmitJob") and pick < 0.6:
            h.shards = r.choice((0, 1, 2, 3, 5, 8, 64, 2**32 - 1))
        elif pick < 0.75 and graph is not None:
            from ..worker.codec import graph_id_of_proto

            h.graph_id = graph_id_of_proto(graph)  # the same graph, by id
        elif pick < 0.85 and kind != "SubmitJob":
            h.session_id = SESSION_PLACEHOLDER.decode() if r.random() < 0.8 else r.choice(_STRINGS)
            if r.random() < 0.7:
                h.ClearField(h.WhichOneof("graph_ref") or "graph")
            for m in messages:
                if r.random() < 0.8:
                    del m.params[:]
        elif kind == "SubmitJob":
            field = r.choice(("batch_size", "epochs", "seed", "checkpoint_every", "data_path", "optimizer_json"))
            if field == "data_path":
                h.data_path = r.choice(DATA_PATHS) if r.random() < 0.8 else self._string(h.data_path, h)
                if r.random() < 0.6:
                    for m in messages:
                        del m.data[:]
            elif field == "optimizer_json":
                h.optimizer_json = self._json(h.optimizer_json)
            else:
                setattr(h, field, r.choice((0, 1, 2, 3, 7, 64, 2**32 - 1)))
        else:
            self._field(h)

    def _stream(self, kind, messages):
        r = self.rng
        if kind not in STREAMING:
            return messages
        pick = r.random()
        messages = list(messages)
        if pick < 0.35 and messages:  # one message's tensors spread over separate messages
            i = r.randrange(len(messages))
            m = messages[i]
            moved = []
            for field in _tensor_fields(m):
                for chunk in getattr(m, field):
                    extra = type(m)()
                    getattr(extra, field).add().CopyFrom(chunk)
                    moved.append(extra)
                m.ClearField(field)
            messages[i + 1:i + 1] = moved
        elif pick < 0.5 and messages:
            copy = type(messages[0])()
            copy.CopyFrom(r.choice(messages))
            messages.insert(r.randint(0, len(messages)), copy)
        elif pick < 0.65 and messages:
            del messages[r.randrange(len(messages))]
        elif pick < 0.8 and len(messages) > 1:
            i, j = r.randrange(len(messages)), r.randrange(len(messages))
            messages[i], messages[j] = messages[j], messages[i]
        else:
            messages.insert(r.randint(0, len(messages)), type(messages[0])() if messages else request_class(kind)())
        return messages

    def convert(self, kind, messages, to):
        """The same graph and tensors as a request of kind ``to``."""
        pb = _pb()
        heads = [m.header for m in messages if kind != "RegisterGraph" and m.HasField("header")]
        ref = graph = graph_id = None
        session_id = ""
        if kind == "RegisterGraph":
            graph = messages[0].graph if messages else None
        elif heads:
            ref = heads[0].WhichOneof("graph_ref")
            graph = heads[0].graph if ref == "graph" else None
            graph_id = heads[0].graph_id if ref == "graph_id" else None
            session_id = getattr(heads[0], "session_id", "")
        params = [c for m in messages if kind != "RegisterGraph" for c in m.params]
        batch = [c for m in messages for f in ("batch", "data") if f in _tensor_fields(m) for c in getattr(m, f)]
        ref_fields = {"graph": graph} if graph is not None else {"graph_id": graph_id} if graph_id else {}
        if to == "RegisterGraph":
            if graph is None and graph_id:
                graph = self.graphs.get(graph_id)
            return to, [pb.RegisterGraphRequest(graph=graph) if graph is not None else pb.RegisterGraphRequest()]
        if to == "Compute":
            return to, [pb.ComputeRequest(header=pb.ComputeHeader(session_id=session_id, **ref_fields),
                                          params=params, batch=batch)]
        if to == "CreateSession":
            return to, [pb.SessionRequest(header=pb.SessionHeader(**ref_fields), params=params)]
        header = pb.JobHeader(optimizer_json=self.rng.choice(OPTIMIZERS), batch_size=self.rng.choice((1, 2, 3)),
                              epochs=1, **ref_fields)
        return to, [pb.JobRequest(header=header, params=params, data=batch)]

    def _remember_graphs(self, messages) -> None:
        if len(self.graphs) > 512:
            self.graphs.clear()
        for m in messages:
            graph = _graph_of(m)
            if graph is not None and graph.nodes:
                from ..worker.codec import graph_id_of_proto

                self.graphs.setdefault(graph_id_of_proto(graph), graph)

    # ------------------------------------------------------------ plain bytes (no libFuzzer)

    def _bytes(self, data: bytes, max_size: int) -> bytes:
        r = self.rng
        b = bytearray(data)
        for _ in range(r.randint(1, 4)):
            pick = r.random()
            if pick < 0.3 and len(b) > 1:
                i = r.randrange(1, len(b))
                b[i] ^= 1 << r.randrange(8)
            elif pick < 0.5 and len(b) > 1:
                i = r.randrange(1, len(b))
                b[i] = r.choice((0, 1, 0x7F, 0x80, 0xFF))
            elif pick < 0.65:
                i = r.randint(1, len(b)) if len(b) > 1 else len(b)
                b[i:i] = bytes(r.getrandbits(8) for _ in range(r.randint(1, 8)))
            elif pick < 0.8 and len(b) > 2:
                i = r.randrange(1, len(b))
                del b[i:i + r.randint(1, 16)]
            elif pick < 0.9 and len(b) > 2:
                i = r.randrange(1, len(b))
                j = min(len(b), i + r.randint(1, 64))
                b[j:j] = b[i:j]
            else:
                b[:1] = bytes([r.getrandbits(8)])
        return bytes(b[:max_size])


def _present(msg, f) -> bool:
    if f.is_repeated:
        return len(getattr(msg, f.name)) > 0
    if f.message_type is not None or f.containing_oneof is not None:
        return msg.HasField(f.name)
    return bool(getattr(msg, f.name))


def _tensor_fields(msg) -> list[str]:
    return [f.name for f in msg.DESCRIPTOR.fields if f.message_type is not None and f.message_type.name == "TensorChunk"]


def _graph_of(msg):
    if msg.DESCRIPTOR.name == "RegisterGraphRequest":
        return msg.graph
    if "header" in msg.DESCRIPTOR.fields_by_name and msg.HasField("header") and msg.header.HasField("graph"):
        return msg.header.graph
    return None


def _strings_in(messages) -> list[str]:
    out: set[str] = set()
    for m in messages:
        graph = _graph_of(m)
        if graph is not None:
            out.update(s.name for s in graph.inputs)
            out.update(s.name for s in graph.params)
            out.update(c.name for c in graph.constants)
            out.update(n.name for n in graph.nodes)
        for field in _tensor_fields(m):
            out.update(c.name for c in getattr(m, field))
    return sorted(out)


_ITEMSIZE = {1: 4, 2: 8, 3: 4, 4: 8, 5: 1}
_NUMPY = {1: "<f4", 2: "<f8", 3: "<i4", 4: "<i8", 5: "u1"}


def _random_bytes(r: random.Random, dtype: int, shape: list[int]) -> bytes | None:
    """Bytes of a tensor of this dtype and shape, values mostly tame; None if it cannot be (too big)."""
    import numpy as np

    if dtype not in _ITEMSIZE or any(d < 0 for d in shape):
        return None
    n = math.prod(shape)
    if n * _ITEMSIZE[dtype] > 48 << 10:
        return None
    g = np.random.default_rng(r.getrandbits(32))
    if dtype in (1, 2):
        values = g.standard_normal(n)
        if r.random() < 0.15 and n:
            values[g.integers(0, n)] = r.choice((np.nan, np.inf, -np.inf, 1e30, -0.0, 1e-40, 0.0))
    elif dtype in (3, 4):
        values = g.integers(0, 5, n)
        if r.random() < 0.15 and n:
            values[g.integers(0, n)] = r.choice((-1, 2**31 - 1, -2**31, 1000))
    else:
        values = g.integers(0, 2, n)
        if r.random() < 0.05 and n:
            values[g.integers(0, n)] = 2
    return values.astype(_NUMPY[dtype]).tobytes()


def _fitting(r: random.Random, specs, rows: int) -> dict:
    """Arrays for ``NamedSpec``s: unknown (-1) dims take ``rows``; tensors that cannot be made are left out."""
    import numpy as np

    out = {}
    for s in specs:
        shape = [rows if d == -1 else d for d in s.spec.shape]
        data = _random_bytes(r, s.spec.dtype, shape)
        if data is None or s.name in out:
            continue
        out[s.name] = np.frombuffer(data, _NUMPY[s.spec.dtype]).astype(
            {1: np.float32, 2: np.float64, 3: np.int32, 4: np.int64, 5: np.bool_}[s.spec.dtype]).reshape(shape)
    return out


def _plausible_attr(r: random.Random, value, kind: str, key: str) -> None:
    """An attribute value of the given kind, mostly within what shapes allow."""
    if kind == "int":
        value.i = r.choice((-3, -2, -1, 0, 1, 2, 3))
    elif kind == "float":
        value.f = r.choice((0.0, 0.5, 1.0, 2.0, 3.0, -1.0, -0.5, float("nan"), 1e300))
    elif kind == "bool":
        value.b = r.random() < 0.5
    elif kind == "axes":
        if r.random() < 0.5:
            value.i = r.choice((-2, -1, 0, 1, 2))
        else:
            value.ints.values[:] = r.sample((-2, -1, 0, 1, 2), r.randint(0, 3))
    else:  # ints: a shape, a permutation, slice bounds
        n = r.choice((0, 1, 2, 3, 3, 4))
        if key == "perm":
            perm = list(range(n))
            r.shuffle(perm)
            value.ints.values[:] = perm
        else:
            value.ints.values[:] = [r.choice((-1, 0, 1, 2, 3, 4, 6, 12, -2, 2**31)) for _ in range(n)]


# ---------------------------------------------------------------- the worker (one process)


class Worker:
    """Runs inputs through a ``Target``; stats, the watchdog, the current-input file."""

    def __init__(self, workdir: Path, args):
        self.workdir, self.args = workdir, args
        self.target = Target(workdir, real_pools=args.real_pools, hang_seconds=args.hang_seconds,
                             rss_cap_mb=args.rss_mb)
        self.violations: list[dict] = []
        self.seen_classes: set[str] = set()
        self.known: collections.Counter = collections.Counter()  # known bug -> inputs that hit it
        self.known_examples: dict[str, dict] = {}
        self.started = time.monotonic()
        self.deadline = self.started + args.seconds
        self.current = os.open(workdir / "current-input", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.input_started = 0.0
        self.input_kind = ""
        self.last_print = self.started
        self.mutator = Mutator
        make_datasets(workdir)
        threading.Thread(target=self._watchdog, daemon=True, name="fuzz-watchdog").start()

    def one(self, data: bytes) -> None:
        if len(data) > MAX_LEN:
            data = data[:MAX_LEN]
        os.ftruncate(self.current, 0)
        os.pwrite(self.current, data, 0)
        self.input_started = time.monotonic()
        try:
            self.target.run(data)
        except Violation as v:
            self._record(v)
        finally:
            self.input_started = 0.0
        now = time.monotonic()
        if now - self.last_print >= self.args.print_every:
            self.last_print = now
            self._print_stats(now)

    def _record(self, v: Violation) -> None:
        record = v.record
        last = [line.strip() for line in record["detail"].splitlines() if line.strip().startswith("File ")][-1:]
        record["class"] = f"{record['what']} {record['kind']} {record['status']} {' '.join(last)}"[:300]
        bug = known_bug(record)
        if bug is not None:
            self.known[bug] += 1
            if bug not in self.known_examples or len(record["hex"]) < len(self.known_examples[bug]["hex"]):
                self.known_examples[bug] = record
            return
        if record["class"] in self.seen_classes:
            return
        self.seen_classes.add(record["class"])
        self.violations.append(record)
        print(f"\n=== VIOLATION {record['class']}\n{v}", file=sys.stderr, flush=True)
        name = hashlib.sha1(bytes.fromhex(record["hex"])).hexdigest()[:16]
        (self.workdir / "violations").mkdir(exist_ok=True)
        (self.workdir / "violations" / f"{name}.json").write_text(json.dumps(record, indent=1))

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline

    def _print_stats(self, now: float) -> None:
        t = self.target
        rate = t.executions / max(1e-9, now - self.started)
        print(f"[fuzz {now - self.started:6.0f}s] execs={t.executions} exec/s={rate:.0f} "
              f"violations={len(self.violations)} peak_rss={peak_rss_mb():.0f}MB "
              f"details>7KiB={t.details_too_long}", file=sys.stderr, flush=True)

    def report(self, engine: str) -> dict:
        t = self.target
        elapsed = time.monotonic() - self.started
        bad = self.violations
        return {
            "engine": engine, "seconds": round(elapsed, 1), "executions": t.executions,
            "exec_per_s": round(t.executions / max(elapsed, 1e-9), 1),
            "violations": bad, "known": dict(self.known), "known_examples": self.known_examples,
            "crashes": 0, "internal_or_unknown": sum(1 for v in bad if v["status"] in ("INTERNAL", "UNKNOWN")
                                                     or v["what"] in ("escaped", "job", "serialize")),
            "hangs": sum(1 for v in bad if v["what"] == "hang"),
            "ooms": sum(1 for v in bad if v["what"] in ("oom", "memory")),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_cap_mb": self.args.rss_mb, "as_cap_mb": self.args.as_mb,
            "statuses": dict(sorted(t.statuses.items())), "exceptions": dict(t.exceptions.most_common(40)),
            "details_too_long": t.details_too_long,
            "slowest": [{"seconds": round(s, 3), "kind": k, "status": st, "hex": h} for s, k, st, h in t.slowest],
            "limits": FUZZ_LIMITS,
        }

    def _watchdog(self) -> None:
        while True:
            time.sleep(0.5)
            started = self.input_started
            if started and time.monotonic() - started > self.args.hard_seconds:
                data = os.pread(self.current, MAX_LEN + 1, 0)
                record = {"what": "hang", "kind": unpack(data)[0], "status": "-", "hex": data.hex(),
                          "detail": f"still running after {self.args.hard_seconds:g} s (watchdog)",
                          "class": "hang watchdog"}
                self.violations.append(record)
                faulthandler.dump_traceback(all_threads=True)
                self._write_report("watchdog")
                os._exit(87)

    def _write_report(self, engine: str) -> None:
        Path(self.args.report).write_text(json.dumps(self.report(engine), indent=1))


def _worker_main(args) -> int:
    workdir = Path(args.workdir)
    os.chdir(workdir)  # relative data paths of job seeds point into it
    if args.as_mb:
        resource.setrlimit(resource.RLIMIT_AS, (args.as_mb << 20, args.as_mb << 20))
    faulthandler.enable()
    warnings.simplefilter("ignore")  # NumPy's overflow warnings of fuzzed values, once per line
    worker = Worker(workdir, args)
    engine = args.engine
    if engine == "replay":
        return _replay(worker, args)
    if engine == "minimize":
        return _minimize(worker, args)
    seeds = seed_corpus()
    if engine == "atheris":
        return _run_atheris(worker, seeds, args)
    return _run_hypothesis(worker, seeds, args)


def _replay(worker: Worker, args) -> int:
    """Each input of ``--replay`` once; the report lists them with their status."""
    results = []
    for h in _replay_inputs(args.replay):
        data = bytes.fromhex(h)
        entry = {"hex": h, "kind": unpack(data)[0]}
        try:
            entry["status"] = worker.target.run(data)
            entry["details"] = worker.target.last_details[:2000]
        except Violation as v:
            worker._record(v)
            entry.update(status=v.record["status"], violation=v.record["what"], known=known_bug(v.record),
                         details=v.record["detail"][-4000:])
        results.append(entry)
    report = worker.report("replay")
    report["results"] = results
    Path(args.report).write_text(json.dumps(report, indent=1))
    os._exit(0)


def _minimize(worker: Worker, args) -> int:
    """The smallest input (greedy: drop messages, list items and fields, halve strings) that
    breaks the property the same way as the given one (same violation, kind, status and
    deepest frame)."""
    (h,) = _replay_inputs(args.replay)[:1]
    data = bytes.fromhex(h)

    def verdict(candidate: bytes):
        try:
            worker.target.run(candidate)
        except Violation as v:
            last = [line.strip() for line in v.record["detail"].splitlines() if line.strip().startswith("File ")][-1:]
            return (v.record["what"], v.record["kind"], v.record["status"], tuple(last))
        return None

    wanted = verdict(data)
    if wanted is None:
        Path(args.report).write_text(json.dumps({"results": [], "error": "the input breaks nothing"}))
        os._exit(0)
    tries, deadline = 0, time.monotonic() + args.seconds
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in _reductions(data):
            if time.monotonic() >= deadline:
                break
            tries += 1
            if len(candidate) < len(data) and verdict(candidate) == wanted:
                data, improved = candidate, True
                break
    result = {"hex": data.hex(), "kind": wanted[1], "status": wanted[2], "violation": wanted[0],
              "frame": " ".join(wanted[3]), "tries": tries, "bytes": len(data)}
    Path(args.report).write_text(json.dumps({"results": [result]}))
    os._exit(0)


def _reductions(data: bytes):
    """Inputs one edit smaller than ``data``."""
    kind, framed, raw = unpack(data)
    if framed:
        yield pack(kind, raw, False)
    try:
        messages = [request_class(kind).FromString(m) for m in raw]
    except Exception:  # noqa: BLE001 - not protobuf: cut bytes
        for size in (len(raw[0]) // 2, len(raw[0]) - 1):
            yield pack(kind, [raw[0][:size]], framed)
        return
    if kind in STREAMING:
        for i in range(len(messages)):
            yield pack(kind, raw[:i] + raw[i + 1:], framed)
    for i, message in enumerate(messages):
        for edit in _edits(message):
            copy = type(message)()
            copy.CopyFrom(message)
            try:
                edit(copy)
            except Exception:  # noqa: BLE001
                continue
            yield pack(kind, raw[:i] + [copy.SerializeToString()] + raw[i + 1:], framed)


def _edits(message, path=()):
    """Edits (functions of a copy of the root message), each removing one piece of it."""
    def at(root):
        for name, index in path:
            root = getattr(root, name) if index is None else getattr(root, name)[index]
        return root

    for f, value in message.ListFields():
        name = f.name
        if f.is_repeated:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                for key in list(value.keys()):
                    yield lambda root, n=name, k=key: getattr(at(root), n).__delitem__(k)
                continue
            for i in range(len(value)):
                yield lambda root, n=name, i=i: getattr(at(root), n).__delitem__(i)
            if f.message_type is not None:
                for i in range(len(value)):
                    yield from _edits(value[i], path + ((name, i),))
        else:
            yield lambda root, n=name: at(root).ClearField(n)
            if f.message_type is not None:
                yield from _edits(value, path + ((name, None),))
            elif f.type in (f.TYPE_STRING, f.TYPE_BYTES) and len(value) > 1:
                yield lambda root, n=name: setattr(at(root), n, getattr(at(root), n)[: len(getattr(at(root), n)) // 2])


def _finish(worker: Worker, engine: str) -> None:
    worker._print_stats(time.monotonic())
    worker._write_report(engine)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # libFuzzer never returns; the job and server threads need no join


def _run_atheris(worker: Worker, seeds, args) -> int:
    import atheris

    corpus = worker.workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    for name, data in seeds:
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    mutator = worker.mutator(random.Random(args.seed))

    def test_one_input(data: bytes) -> None:
        if worker.out_of_time():
            _finish(worker, "atheris")
        worker.one(data)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        return mutator.mutate(data, max_size, byte_mutate=atheris.Mutate)

    def custom_crossover(data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        return mutator.crossover(data1, data2, max_size)

    argv = [sys.argv[0], str(corpus), f"-seed={args.seed}", f"-max_len={MAX_LEN}",
            f"-timeout={int(args.hard_seconds + 10)}", f"-rss_limit_mb={int(args.rss_mb) + 512}",
            f"-max_total_time={int(args.seconds) + 60}", "-print_final_stats=1", "-reload=0",
            f"-artifact_prefix={worker.workdir}/", "-close_fd_mask=0"]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator, custom_crossover=custom_crossover)
    atheris.Fuzz()
    _finish(worker, "atheris")
    return 0


def _run_hypothesis(worker: Worker, seeds, args) -> int:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    for _, data in seeds:  # the corpus itself first
        worker.one(data)
    seed_inputs = [data for _, data in seeds]
    mutator = worker.mutator(random.Random(args.seed))

    def structured(seed, base, rounds):
        # a drawn seed, not st.randoms(): every call of a drawn Random is a hypothesis draw,
        # which made a run ten times slower; the input itself is what gets reported
        mutator.rng.seed(seed)
        data = base
        for _ in range(rounds):
            data = mutator.mutate(data, MAX_LEN, byte_mutate=None)
        return data

    inputs = st.one_of(
        st.builds(structured, st.integers(0, 2**64 - 1), st.sampled_from(seed_inputs), st.integers(1, 6)),
        st.builds(lambda k, b: bytes([k]) + b, st.integers(0, 255), st.binary(max_size=512)),
    )
    stop = _OutOfTime()

    @settings(max_examples=2000, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(inputs)
    def fuzz(data):
        if worker.out_of_time():
            raise stop
        worker.one(data)

    round_ = 0
    while not worker.out_of_time():
        try:
            hypothesis_seed(args.seed * 1000 + round_)(fuzz)()
        except _OutOfTime:
            break
        round_ += 1
    _finish(worker, "hypothesis")
    return 0


class _OutOfTime(BaseException):
    """Ends a hypothesis run when the time budget is spent (not a failure)."""


# ---------------------------------------------------------------- the supervisor


_BOOTSTRAP = """
import sys
try:
    import atheris
except ImportError:
    atheris = None
if atheris is not None and sys.argv[1] == "atheris":
    with atheris.instrument_imports(include=["gradwire"], exclude=["gradwire.bench", "gradwire.protos"]):
        import gradwire, gradwire.server.app, gradwire.server.servicer
import gradwire.bench.fuzz as fuzz
sys.exit(fuzz._worker_main(fuzz._parser().parse_args(sys.argv[2:])))
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gradwire.bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("GRADWIRE_FUZZ_SECONDS", 30)),
                   help="time budget per worker (default $GRADWIRE_FUZZ_SECONDS or 30)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (seeds seed, seed+1, ...)")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis", "replay", "minimize"), default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-mb", type=float, default=1024.0, help="peak RSS a worker may reach (MB)")
    p.add_argument("--as-mb", type=int, default=6144, help="RLIMIT_AS of a worker (MiB; 0: none)")
    p.add_argument("--hang-seconds", type=float, default=10.0, help="an input answered later is a hang")
    p.add_argument("--hard-seconds", type=float, default=30.0, help="the watchdog ends the worker after this")
    p.add_argument("--real-pools", action="store_true",
                   help="run handler work in the servicer's thread pools (default: inline, same code)")
    p.add_argument("--print-every", type=float, default=10.0)
    p.add_argument("--report", default="", help="write the JSON report here")
    p.add_argument("--replay", nargs="+", metavar="HEX", default=None,
                   help="run these inputs once each (hex; 'known' adds every known bug's inputs, 'regressions' "
                        "the fixed ones', @PATH the "
                        "inputs of a file, one hex a line) and report")
    p.add_argument("--minimize", metavar="HEX", default=None,
                   help="shrink this input (for --seconds) while it breaks the property the same way")
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the work directories (corpus, artifacts)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    engine = args.engine
    if args.replay or args.minimize:
        return _replay_main(args)
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    # job checkpoints are fsync'ed: on tmpfs that costs nothing
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="gradwire-fuzz-", dir=shm))
    procs = []
    for i in range(max(1, args.workers)):
        workdir = root / f"w{i}"
        workdir.mkdir()
        child = [a for a in (argv if argv is not None else sys.argv[1:])]
        child = _strip(child, ("--workers", "--report", "--seed", "--engine", "--workdir"))
        child += ["--seed", str(args.seed + i), "--workdir", str(workdir), "--report", str(workdir / "report.json"),
                  "--engine", engine]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        log = open(workdir / "log.txt", "wb")
        proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, engine, *child], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, workdir, log))
    started = time.monotonic()
    reports = []
    for proc, workdir, log in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        reports.append(_collect(proc.returncode, workdir, usage))
    summary = _merge(reports, engine, time.monotonic() - started)
    summary["rss_cap_mb"], summary["as_cap_mb"] = args.rss_mb, args.as_mb
    text = json.dumps(summary, indent=1)
    if args.report:
        Path(args.report).write_text(text)
    _print_summary(summary)
    if not args.keep and not summary["violations"]:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work directories kept in {root}")
    return 1 if summary["violations"] else 0


def _replay_inputs(items: list[str]) -> list[str]:
    inputs = []
    for item in items:
        if item == "known":
            inputs += [h for bug in KNOWN_BUGS for _, h in bug["inputs"]]
        elif item == "regressions":
            inputs += [h for _, h, _ in REGRESSIONS]
        elif item.startswith("@"):
            inputs += [line.strip() for line in Path(item[1:]).read_text().splitlines() if line.strip()]
        else:
            inputs.append(item)
    return inputs


def _replay_main(args) -> int:
    inputs = _replay_inputs([args.minimize] if args.minimize else args.replay)
    workdir = Path(tempfile.mkdtemp(prefix="gradwire-fuzz-replay-"))
    report = workdir / "report.json"
    (workdir / "inputs.txt").write_text("\n".join(inputs) + "\n")
    engine = "minimize" if args.minimize else "replay"
    child = ["--workdir", str(workdir), "--report", str(report), "--engine", engine, "--replay",
             f"@{workdir / 'inputs.txt'}", "--seconds", str(args.seconds if args.minimize else 30),
             "--hang-seconds", str(args.hang_seconds), "--hard-seconds", str(args.hard_seconds),
             "--rss-mb", str(args.rss_mb), "--as-mb", str(args.as_mb)]
    with open(workdir / "log.txt", "wb") as log:
        code = subprocess.call([sys.executable, "-c", _BOOTSTRAP, engine, *child], cwd=workdir,
                               stdout=log, stderr=subprocess.STDOUT)
    if not report.exists():
        print((workdir / "log.txt").read_text(errors="replace")[-4000:])
        return 2
    result = json.loads(report.read_text())
    text = json.dumps(result["results"], indent=1)
    if args.report:
        Path(args.report).write_text(text)
    for r in result["results"]:
        print(f"{r['kind']} -> {r['status']}" + (f" [{r['violation']}" + (f", known bug {r['known']}" if r.get("known")
                                                  else "") + "]" if r.get("violation") else "") + f"  {r['hex'][:80]}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.get("violation") and not r.get("known") for r in result["results"]) else 0 if code == 0 else 2


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options):
            continue
        out.append(a)
    return out


def _collect(returncode: int, workdir: Path, usage) -> dict:
    path = workdir / "report.json"
    log_text = (workdir / "log.txt").read_text(errors="replace")
    report = json.loads(path.read_text()) if path.exists() else None
    child_rss = usage.ru_maxrss / 1024
    if report is None or (returncode != 0 and returncode != 87):
        data = (workdir / "current-input").read_bytes() if (workdir / "current-input").exists() else b""
        crash = {"what": "crash", "kind": unpack(data)[0] if data else "-", "status": f"exit {returncode}",
                 "hex": data.hex(), "detail": log_text[-6000:], "class": f"crash exit {returncode}"}
        report = report or {"executions": 0, "seconds": 0, "violations": [], "known": {}, "statuses": {},
                            "exceptions": {}, "details_too_long": 0, "slowest": [], "peak_rss_mb": child_rss}
        report["violations"].append(crash)
        report["crashes"] = report.get("crashes", 0) + 1
    report["peak_rss_mb"] = max(report.get("peak_rss_mb", 0), child_rss)
    report["libfuzzer"] = [line for line in log_text.splitlines() if line.startswith("stat::") or "Done " in line][-12:]
    report["log_tail"] = log_text[-2000:]
    return report


def _merge(reports: list[dict], engine: str, wall: float) -> dict:
    statuses: collections.Counter = collections.Counter()
    exceptions: collections.Counter = collections.Counter()
    known: collections.Counter = collections.Counter()
    for r in reports:
        statuses.update(r.get("statuses", {}))
        exceptions.update(r.get("exceptions", {}))
        known.update(r.get("known", {}))
    executions = sum(r.get("executions", 0) for r in reports)
    violations = [v for r in reports for v in r.get("violations", [])]
    return {
        "engine": engine, "workers": len(reports), "wall_seconds": round(wall, 1), "executions": executions,
        "exec_per_s": round(executions / max(wall, 1e-9), 1),
        "exec_per_s_per_worker": [r.get("exec_per_s") for r in reports],
        "crashes": sum(1 for v in violations if v["what"] == "crash"),
        "internal_or_unknown": sum(1 for v in violations if v["status"] in ("INTERNAL", "UNKNOWN")
                                   or v["what"] in ("escaped", "job", "serialize")),
        "hangs": sum(1 for v in violations if v["what"] == "hang"),
        "ooms": sum(1 for v in violations if v["what"] in ("oom", "memory")),
        "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in reports),
        "rss_cap_mb": reports[0].get("rss_cap_mb"), "as_cap_mb": reports[0].get("as_cap_mb"),
        "violations": violations, "known": dict(known),
        "known_examples": {k: v for r in reports for k, v in r.get("known_examples", {}).items()},
        "details_too_long": sum(r.get("details_too_long", 0) for r in reports),
        "statuses": dict(sorted(statuses.items())), "exceptions": dict(exceptions.most_common(40)),
        "slowest": sorted((s for r in reports for s in r.get("slowest", [])), key=lambda s: -s["seconds"])[:5],
        "libfuzzer": [r.get("libfuzzer") for r in reports], "limits": FUZZ_LIMITS,
    }


def _print_summary(s: dict) -> None:
    print(f"engine={s['engine']} workers={s['workers']} wall={s['wall_seconds']}s executions={s['executions']} "
          f"exec/s={s['exec_per_s']} crashes={s['crashes']} internal_or_unknown={s['internal_or_unknown']} "
          f"hangs={s['hangs']} ooms={s['ooms']} peak_rss={s['peak_rss_mb']:.0f}MB (cap {s['rss_cap_mb']:.0f}MB) "
          f"status_details_over_7KiB={s['details_too_long']}")
    for name, count in s["known"].items():
        print(f"known bug {name}: {count} input(s)")
    for v in s["violations"]:
        print(f"VIOLATION {v['what']}: {v['kind']} -> {v['status']}\n  input hex: {v['hex'][:20000]}\n"
              f"  {v['detail'][-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
