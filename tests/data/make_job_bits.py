"""Pin the final parameters of training jobs as the job path computed them before it moved
data onto the workers (commit of issue 11's start). Run from the checkout root."""
import os, sys, tempfile, json
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import numpy as np
import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig
from threadpoolctl import threadpool_info

def job_inputs():
    g = gw.Graph()
    x, y = g.input("x", (None, 12)), g.input("y", (None,), "int64")
    w1, b1 = g.param("w1", (12, 32)), g.param("b1", (32,))
    w2, b2 = g.param("w2", (32, 4)), g.param("b2", (4,))
    g.set_loss(gw.softmax_cross_entropy(gw.relu(x @ w1 + b1) @ w2 + b2, y))
    rng = np.random.default_rng(0)
    params = {"w1": (rng.normal(size=(12, 32)) * 0.3).astype(np.float32), "b1": np.zeros(32, np.float32),
              "w2": (rng.normal(size=(32, 4)) * 0.3).astype(np.float32), "b2": np.zeros(4, np.float32)}
    labels = rng.integers(0, 4, size=403)
    data = {"x": (rng.normal(size=(403, 12)) + np.eye(4, 12)[labels] * 2).astype(np.float32), "y": labels.astype(np.int64)}
    return g, params, data


def main():
    out = {}
    for name, cfg in [("local", dict(backend="local", shards=4)),
                      ("ray2", dict(backend="ray", workers=2, worker_cpus=1, shards=4))]:
        g, params, data = job_inputs()
        with tempfile.TemporaryDirectory() as tmp:
            server, port = create_server(ServerConfig(port=0, job_dir=tmp, **cfg))
            try:
                with gw.connect(f"127.0.0.1:{port}", timeout=300) as client:
                    for opt_name, opt in [("adam", gw.optim.Adam(lr=1e-2)), ("sgd", gw.optim.SGD(lr=0.1, momentum=0.9))]:
                        job = client.submit_job(g, params, data, opt, batch_size=100, epochs=3, seed=5)
                        final = job.result()
                        for k, v in final.items():
                            out[f"{name}/{opt_name}/{k}"] = v
            finally:
                server.stop(0)
    cores = sorted({i.get("internal_api", "") + ":" + str(i.get("architecture", "")) for i in threadpool_info()
                    if i.get("user_api") == "blas"})
    out["meta"] = np.array(json.dumps({"blas": cores}))
    np.savez("tests/data/job_bits_v1.npz", **out)
    print("pinned", sorted(out))


if __name__ == "__main__":
    main()
