"""Coverage-guided fuzzing of the request path (bench/fuzz.py; docs/ARCHITECTURE.md, "Fuzzing").

A bounded run (25 s, seed 1; ``GRADWIRE_FUZZ_SECONDS`` sets another budget) drives request
bytes of Compute, RegisterGraph, CreateSession and SubmitJob through the servicer's handlers
in a subprocess with small server limits and a memory cap. Every input must end in an answer
or a status of the status table other than INTERNAL/UNKNOWN, within bounded time, memory
and held resources, and a sharded answer must agree with the one-shard answer. A failure
names the input (hex), its kind and status; ``python -m gradwire.bench.fuzz --replay HEX``
reruns it, ``--minimize HEX`` shrinks it.

Inputs of bugs the fuzzer found and that were fixed (``fuzz.REGRESSIONS``) are seeds of every
run and replayed here one by one. Bugs reported but not fixed yet would be listed in
``fuzz.KNOWN_BUGS``: a run counts them by name instead of failing, and each is replayed here
as an xfail test (strict=False) that passes once the bug is fixed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys

import grpc
import pytest

from gradwire.bench import fuzz

SECONDS = float(os.environ.get("GRADWIRE_FUZZ_SECONDS", 25))
HAS_ATHERIS = importlib.util.find_spec("atheris") is not None
HAS_HYPOTHESIS = importlib.util.find_spec("hypothesis") is not None
needs_an_engine = pytest.mark.skipif(not (HAS_ATHERIS or HAS_HYPOTHESIS),
                                     reason="no fuzzing engine: pip install 'gradwire[fuzz]' (atheris, hypothesis)")


def _run(tmp_path, *args: str, timeout: float) -> tuple[dict, str]:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "gradwire.bench.fuzz", *args, "--report", str(report)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert report.exists(), f"no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(report.read_text()), proc.stdout


def _explain(report: dict) -> str:
    lines = []
    for v in report["violations"]:
        lines.append(f"{v['what']}: {v['kind']} -> {v['status']}\n  input hex: {v['hex'][:8000]}\n"
                     f"  replay: python -m gradwire.bench.fuzz --replay {v['hex'][:8000]}\n{v['detail'][-3000:]}")
    return "\n\n".join(lines)


def _assert_property(report: dict, min_executions: int) -> None:
    assert not report["violations"], _explain(report)
    assert report["crashes"] == report["internal_or_unknown"] == report["hangs"] == report["ooms"] == 0
    assert report["peak_rss_mb"] < report["rss_cap_mb"]
    assert report["executions"] >= min_executions, report
    kinds = {key.split(" ")[0] for key in report["statuses"]}
    assert kinds == set(fuzz.KINDS), report["statuses"]  # every kind was reached ...
    assert {f"{k} OK" for k in fuzz.KINDS} <= set(report["statuses"]), report["statuses"]  # ... and answered


@needs_an_engine
def test_fuzz_bounded_run(tmp_path):
    """The suite's run: the default engine (atheris if installed, else hypothesis), seed 1."""
    report, stdout = _run(tmp_path, "--seconds", str(SECONDS), "--seed", "1", timeout=SECONDS + 180)
    print(stdout)
    _assert_property(report, min_executions=int(SECONDS * 20))


@pytest.mark.skipif(not (HAS_ATHERIS and HAS_HYPOTHESIS),
                    reason="without atheris the bounded run above is the hypothesis engine")
def test_fuzz_hypothesis_fallback(tmp_path):
    """The fallback engine (what runs where atheris does not install) keeps working."""
    report, stdout = _run(tmp_path, "--seconds", "6", "--seed", "1", "--engine", "hypothesis", timeout=180)
    print(stdout)
    assert report["engine"] == "hypothesis"
    _assert_property(report, min_executions=100)


def test_seed_corpus_holds_the_bad_request_corpus():
    """Every CASES entry of a fuzzed kind becomes a seed, next to good requests of every kind
    (except cases that need a live server's state or build many MB: those are left out)."""
    bad = fuzz._bad_request_module()
    assert bad is not None, "tests/test_bad_requests.py not found"
    names = {name for name, _ in fuzz.corpus()}
    fuzzed = [c for c in bad.CASES if c.method in fuzz._METHOD_KINDS]
    for case in fuzzed:
        if case.id in fuzz.SKIPPED_CASES:
            continue
        assert f"bad/{case.id}" in names or f"bad/{case.id}/as-SubmitJob" in names, case.id
    assert len(fuzz.SKIPPED_CASES) <= 0.1 * len(fuzzed), fuzz.SKIPPED_CASES
    assert {fuzz.unpack(data)[0] for _, data in fuzz.seed_corpus()} == set(fuzz.KINDS)


def test_mutator_applies_every_mutation():
    """Each structured mutation runs and almost never fails (a broken one would only show as a
    weaker fuzzer), and its outputs stay inputs of the format."""
    seeds = [data for _, data in fuzz.seed_corpus()]
    mutator, rng = fuzz.Mutator(random.Random(0)), random.Random(1)
    outputs = [mutator.mutate(rng.choice(seeds), fuzz.MAX_LEN) for _ in range(3000)]
    assert set(mutator.applied) == {"field", "graph", "conform", "tensor", "header", "stream", "convert", "framed"}
    assert sum(mutator.failed.values()) < 0.01 * sum(mutator.applied.values()), mutator.failed
    assert all(len(out) <= fuzz.MAX_LEN for out in outputs)
    assert sum(out not in seeds for out in outputs) > 0.9 * len(outputs)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Every good seed and every known bug's inputs, run once in one worker process."""
    tmp = tmp_path_factory.mktemp("replay")
    good = [data.hex() for name, data in fuzz.seed_corpus() if name.startswith("good/") and "data-path" not in name]
    known = [h for bug in fuzz.KNOWN_BUGS for _, h in bug["inputs"]]
    fixed = [h for _, h, _ in fuzz.REGRESSIONS]
    report = tmp / "replay.json"
    (tmp / "inputs.txt").write_text("\n".join(good + known + fixed) + "\n")
    subprocess.run([sys.executable, "-m", "gradwire.bench.fuzz", "--replay", f"@{tmp / 'inputs.txt'}",
                    "--report", str(report)], cwd=tmp, capture_output=True, text=True, timeout=300)
    return {r["hex"]: r for r in json.loads(report.read_text())}


def test_good_seeds_are_answered(replayed):
    """The target really runs requests: each good seed of every kind is answered OK."""
    for name, data in fuzz.seed_corpus():
        if name.startswith("good/") and "data-path" not in name:
            result = replayed[data.hex()]
            assert result["status"] == "OK", (name, result)


@pytest.mark.parametrize("name,h,what", fuzz.REGRESSIONS, ids=[r[0] for r in fuzz.REGRESSIONS])
def test_fixed_bug_stays_fixed(replayed, name, h, what):
    result = replayed[h]
    assert not result.get("violation"), f"{name} ({what}) is back: {result['kind']} -> {result['status']}\n" \
                                        f"{result['details']}"


@pytest.mark.parametrize("bug", fuzz.KNOWN_BUGS, ids=[b["name"] for b in fuzz.KNOWN_BUGS])
def test_known_bug(replayed, bug, request):
    request.applymarker(pytest.mark.xfail(strict=False, reason=f"reported bug {bug['name']}: {bug['summary']}"))
    for label, h in bug["inputs"]:
        result = replayed[h]
        assert not result.get("violation"), f"{label}: {result['kind']} -> {result['status']}\n{result['details']}"


_LONG = [pytest.param(c, n, id=f"{ord(c):x}x{n}") for c, n in fuzz.LONG_DETAILS_BUG["fixed"]] + [
    pytest.param(c, n, id=f"{ord(c):x}x{n}", marks=pytest.mark.xfail(
        strict=False, reason=f"reported bug {fuzz.LONG_DETAILS_BUG['name']}: {fuzz.LONG_DETAILS_BUG['summary']}"))
    for c, n in fuzz.LONG_DETAILS_BUG["op_names"]]


@pytest.mark.parametrize("char,count", _LONG)
def test_long_status_details_reach_the_client(start_server, char, count):
    """On the wire: the server's INVALID_ARGUMENT must reach a client whatever names a request uses."""
    from gradwire.protos import gradwire_pb2 as pb

    _, address = start_server()
    graph = pb.Graph(nodes=[pb.Node(name="a", op=char * count)], loss="a")
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/gradwire.v1.Gradwire/RegisterGraph", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(pb.RegisterGraphRequest(graph=graph).SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
