"""Training jobs from the SDK: ``client.submit_job(...)`` returns a ``TrainingJob``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Cancelled, DeadlineExceeded, NotFound, Unavailable
from ..protos import gradwire_pb2 as pb
from ..worker.codec import assemble, stream_messages
from ..worker.optim import to_config

FINAL_STATES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobEvent:
    step: int
    epoch: int
    loss: float
    examples_per_s: float
    eta_s: float
    state: str
    total_steps: int
    message: str = ""


def _info(msg: pb.JobInfo) -> dict[str, Any]:
    return {"job_id": msg.job_id, "state": msg.state, "step": msg.step, "total_steps": msg.total_steps,
            "epoch": msg.epoch, "loss": msg.loss, "error": msg.error, "graph_id": msg.graph_id, "name": msg.name,
            "placement": msg.placement}


def submit_job(client, graph, params: dict[str, Any], data: dict[str, Any] | str, optimizer, batch_size: int,
               epochs: int = 1, seed: int = 0, checkpoint_every: int = 0, shards: int = 0,
               name: str = "", placement: str = "") -> "TrainingJob":
    """Upload (or point to) a dataset and start training on the server; returns at once."""
    params = {k: np.asarray(v) for k, v in params.items()}
    uploaded = {} if isinstance(data, str) else {k: np.asarray(v) for k, v in data.items()}
    optimizer_json = json.dumps(optimizer if isinstance(optimizer, dict) else to_config(optimizer))

    def send(ref):
        header = pb.JobHeader(**ref, optimizer_json=optimizer_json, batch_size=batch_size, epochs=epochs,
                              seed=seed, checkpoint_every=checkpoint_every, shards=shards, name=name,
                              placement=placement,
                              data_path=data if isinstance(data, str) else "")
        return client.transport.call(
            "SubmitJob",
            lambda: stream_messages(pb.JobRequest, {"header": header}, {"params": params, "data": uploaded},
                                    client.chunk_bytes),
            stream_in=True)

    info = client._with_graph(graph, send)  # noqa: SLF001 - the client's graph-sending policy
    return TrainingJob(client, info.job_id)


def list_jobs(client) -> list[dict[str, Any]]:
    return [_info(j) for j in client.transport.call("ListJobs", pb.ListJobsRequest).jobs]


class TrainingJob:
    def __init__(self, client, job_id: str):
        self.client, self.job_id = client, job_id
        self.last_step = 0

    def info(self) -> dict[str, Any]:
        for job in list_jobs(self.client):
            if job["job_id"] == self.job_id:
                return job
        raise NotFound(f"unknown job id {self.job_id!r}")

    def watch(self, reconnect_for: float = 60.0) -> Iterator[JobEvent]:
        """Progress events until the job ends. A dropped connection (or a server restart)
        is retried for up to ``reconnect_for`` seconds, resuming after the last step seen."""
        give_up = None
        while True:
            try:
                for event in self.client.transport.stream(
                        "WatchJob", pb.WatchJobRequest(job_id=self.job_id, after_step=self.last_step)):
                    give_up = None
                    ev = JobEvent(event.step, event.epoch, event.loss, event.examples_per_s, event.eta_s,
                                  event.state, event.total_steps, event.message)
                    self.last_step = max(self.last_step, ev.step)
                    yield ev
                    if ev.state in FINAL_STATES:
                        return
                # the stream ended before the job did: the server is going away; reconnect
            except (Unavailable, DeadlineExceeded, Cancelled):
                pass
            give_up = give_up or time.monotonic() + reconnect_for
            if time.monotonic() > give_up:
                raise Unavailable(f"lost job {self.job_id!r}: no server answered for {reconnect_for}s")
            time.sleep(0.5)

    def wait(self) -> JobEvent | None:
        last = None
        for last in self.watch():
            pass
        return last

    def result(self) -> dict[str, np.ndarray]:
        """The final parameters (waits for the job to end; raises if it did not finish)."""
        self.wait()
        messages = self.client.transport.call("GetJobResult", lambda: pb.JobRef(job_id=self.job_id),
                                              stream_out=True, timeout=None)
        return assemble(messages, "params")

    def cancel(self) -> dict[str, Any]:
        return _info(self.client.transport.call("CancelJob", lambda: pb.JobRef(job_id=self.job_id)))

    def delete(self) -> dict[str, Any]:
        """Remove the finished job from the server, its folder included."""
        return _info(self.client.transport.call("DeleteJob", lambda: pb.JobRef(job_id=self.job_id)))
