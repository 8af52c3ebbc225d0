#!/usr/bin/env bash
# A real 2-node Ray cluster on this machine's loopback, and a gradwire server on it.
#
#   deploy/ray-2node.sh                 # Ctrl-C (or SIGTERM) stops everything it started
#   RAY_PORT=6380 GRADWIRE_PORT=50052 NODE_CPUS=2 WORKERS=4 WORKER_CPUS=1 deploy/ray-2node.sh
#
# Both nodes are full Ray nodes (own raylet and object store) that happen to share a host:
# the head (GCS + raylet) and a second raylet joining it, each advertising 127.0.0.1, so
# nothing Ray starts listens beyond loopback. The gradwire server listens on 127.0.0.1 too;
# its actors are spread over both nodes (SPREAD; with NODE_CPUS=WORKER_CPUS=1, one per node).
#
# Notes
# - The head is `ray start --head --block`. The second node cannot be a `ray start` on
#   loopback with Ray 2.60 (tried): with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (Linux's
#   default) Ray rewrites --node-ip-address 127.0.0.1 and the GCS address 127.0.0.1 to the
#   host's routable IP (services.resolve_ip_for_localhost), binds on all interfaces and the
#   join fails; with =0 (what keeps Ray on 127.0.0.1) `ray start --address ...` refuses to
#   start a worker node ("Multi-node Ray clusters are not supported on Windows and OSX").
#   So node 2 is started the way `ray start --block` starts a worker node (and as
#   ray.cluster_utils does): a small Python process that creates
#   ray._private.node.Node(head=False) with node_ip_address 127.0.0.1 and blocks. It is a
#   full raylet + object store registered with the head's GCS.
# - Both node processes run in the background and stay the parents of what they started;
#   on SIGTERM each stops exactly its own processes (a raylet's workers die with it). The
#   trap signals the recorded PIDs, newest first; it never runs `ray stop`, which would
#   stop every Ray process of this user, not just ours.
# - One temp dir is fine: the second node uses the head's session directory. Only the
#   dashboard agent's fixed HTTP port (52365 by default) would collide, so each node gets
#   its own. Token authentication is on (RAY_AUTH_MODE=token; Ray keeps the token in
#   ~/.ray/auth_token and creates it if missing), so other local users cannot drive the cluster.
set -euo pipefail

RAY_PORT=${RAY_PORT:-6379}
NODE_CPUS=${NODE_CPUS:-1}
WORKERS=${WORKERS:-2}
WORKER_CPUS=${WORKER_CPUS:-1}
GRADWIRE_PORT=${GRADWIRE_PORT:-50051}
HEAD_AGENT_PORT=${HEAD_AGENT_PORT:-52365}
NODE2_AGENT_PORT=${NODE2_AGENT_PORT:-52366}
START_TIMEOUT=${START_TIMEOUT:-90}
ADDRESS=127.0.0.1:${RAY_PORT}
PYTHON=${PYTHON:-python3}

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keeps every Ray address on 127.0.0.1
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_USAGE_STATS_ENABLED=0
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}

PIDS=()  # what we started, in order; stopped in reverse
cleanup() {
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        if kill -0 "$pid" 2>/dev/null; then
            echo "ray-2node: stopping pid $pid" >&2
            kill -TERM "$pid" 2>/dev/null || true
            # up to 40 s: the server drains its calls, a node drains then stops its processes
            for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "ray-2node: pid $pid did not stop; SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

alive_nodes() {  # how many nodes the head's GCS reports alive (0 while it is not up)
    "$PYTHON" - "$ADDRESS" <<'EOF' 2>/dev/null || echo 0
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5).values()
print(sum(1 for n in nodes if n.state == 0))  # 0 = ALIVE
EOF
}

wait_for_nodes() {
    local want=$1 deadline=$((SECONDS + START_TIMEOUT)) got pid
    while :; do
        got=$(alive_nodes)
        [[ $got -ge $want ]] && return 0
        if ((SECONDS >= deadline)); then
            echo "ray-2node: only $got of $want Ray nodes came up within ${START_TIMEOUT}s" >&2
            return 1
        fi
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "ray-2node: pid $pid exited early" >&2; return 1; }
        done
        sleep 1
    done
}

echo "ray-2node: head node on $ADDRESS ($NODE_CPUS CPU)" >&2
ray start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" --num-cpus "$NODE_CPUS" \
    --include-dashboard false --dashboard-agent-listen-port "$HEAD_AGENT_PORT" --disable-usage-stats &
PIDS+=($!)
wait_for_nodes 1

echo "ray-2node: second node joining $ADDRESS ($NODE_CPUS CPU)" >&2
"$PYTHON" - "$ADDRESS" "$NODE_CPUS" "$NODE2_AGENT_PORT" <<'EOF' &
# what `ray start --block --address A --node-ip-address 127.0.0.1` does, minus the refusal
import signal
import sys

import ray._private.node
from ray._private.parameter import RayParams

address, cpus, agent_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
params = RayParams(node_ip_address="127.0.0.1", gcs_address=address, num_cpus=cpus, num_gpus=0,
                   dashboard_agent_listen_port=agent_port, node_manager_port=0,
                   include_log_monitor=False)  # the head's log monitor covers this host
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
print(f"ray-2node: node {node.node_id} up on 127.0.0.1", file=sys.stderr, flush=True)
while True:  # on SIGTERM, Node's handler stops this node's processes and exits
    signal.pause()
EOF
PIDS+=($!)
wait_for_nodes 2

echo "ray-2node: gradwire serve on 127.0.0.1:$GRADWIRE_PORT ($WORKERS workers x $WORKER_CPUS CPU)" >&2
gradwire serve --backend ray --ray-address "$ADDRESS" --host 127.0.0.1 --port "$GRADWIRE_PORT" \
    --workers "$WORKERS" --worker-cpus "$WORKER_CPUS" &
PIDS+=($!)

# run until the server exits (or we are signalled: the trap then stops everything)
wait "${PIDS[-1]}"
