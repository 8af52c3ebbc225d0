#!/usr/bin/env bash
# The one start-up script of the gradwire image (deploy/Dockerfile) and of deploy/compose.yaml.
#
#   GRADWIRE_ROLE=coordinator  entrypoint.sh [gradwire serve flags...]   # the default role
#   GRADWIRE_ROLE=ray-head     entrypoint.sh [ray start flags...]
#   GRADWIRE_ROLE=ray-worker   RAY_ADDRESS=HOST:PORT entrypoint.sh [ray start flags...]
#   entrypoint.sh COMMAND [ARGS...]   # a first argument that is not a flag: exec it as is
#
# coordinator  `gradwire serve`, configured by the environment (every flag reads GRADWIRE_<FLAG>:
#              GRADWIRE_HOST, GRADWIRE_PORT, GRADWIRE_BACKEND, GRADWIRE_RAY_ADDRESS, ...).
#              With GRADWIRE_BACKEND=ray and GRADWIRE_RAY_ADDRESS=HOST:PORT, a Ray driver has to
#              run on a node of that cluster, so this first starts a local Ray node joining
#              it with no CPUs (GRADWIRE_RAY_JOIN=auto|yes|no; auto: whenever the address is
#              HOST:PORT), then the server (whose ray.init waits up to 60 s for that node's raylet).
# ray-head     `ray start --head --port $RAY_PORT --num-cpus $RAY_NUM_CPUS --include-dashboard=false --block`
# ray-worker   `ray start --address $RAY_ADDRESS --num-cpus $RAY_NUM_CPUS --block`
#
# Processes: with one process to run (every role but a coordinator joining a cluster) the
# script execs it, so it gets the signals (SIGTERM: the server drains, a Ray node stops its
# processes) and its exit status is the container's. With a helper (the coordinator's local Ray
# node) the script stays, as the parent of both: SIGTERM/SIGINT go to the server; when the
# server (or the helper) exits, what is left is stopped by pid, newest first (SIGTERM, then
# SIGKILL after STOP_TIMEOUT seconds); it never runs `ray stop`, which would stop every Ray
# process of the user.
#
# Ray's token authentication: the Ray roles (and a coordinator joining a cluster) run with
# RAY_AUTH_MODE=token unless told otherwise, and refuse to start without RAY_AUTH_TOKEN or
# RAY_AUTH_TOKEN_PATH (a head would otherwise make a token no other node knows). The token
# comes from the environment (compose: an env file; Kubernetes: a Secret); nothing is baked in.
set -euo pipefail

ROLE=${GRADWIRE_ROLE:-coordinator}
RAY_PORT=${RAY_PORT:-6379}
RAY_NUM_CPUS=${RAY_NUM_CPUS:-$(nproc)}
GRACE=${GRADWIRE_GRACE_SECONDS:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-$(( ${GRACE%.*} + 10 ))}  # the server's drain, and some
STOP_TIMEOUT=${STOP_TIMEOUT%.*}  # whole seconds

log() { echo "gradwire-entrypoint: $*" >&2; }
die() { log "$*"; exit 2; }

ray_env() {  # the settings every Ray process of this container runs with
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
    export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
    # a multi-node cluster: advertise this container's address (Ray's default on Linux; gradwire's
    # server defaults it to 0, which keeps a cluster it starts itself on 127.0.0.1)
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-1}
    if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        die "RAY_AUTH_MODE=token but neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set (role $ROLE)"
    fi
}

# --- a process and its helpers, stopped by pid ---------------------------------------------------
PIDS=()  # what we started, in order; stopped in reverse
stop_all() {
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping pid $pid"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq $((STOP_TIMEOUT * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                log "pid $pid did not stop within ${STOP_TIMEOUT}s; SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
    done
}

MAIN=""
STOPPING=""  # why the main process is being stopped: a signal's name, or "helper"
forward() {  # a signal to us: to the main process, which then exits in its own time
    STOPPING=$1
    log "SIG$1: passing it to pid $MAIN"
    kill -"$1" "$MAIN" 2>/dev/null || true
}

supervise() {  # run "$@" as the main process after the helpers already in PIDS; exit with its status
    "$@" &
    MAIN=$!
    PIDS+=("$MAIN")
    trap 'forward TERM' TERM
    trap 'forward INT' INT
    trap stop_all EXIT
    local rc status
    set +e
    wait -n "${PIDS[@]}"  # the first to exit, or a signal (which the trap passes on)
    rc=$?
    while kill -0 "$MAIN" 2>/dev/null; do
        if [[ -z $STOPPING ]]; then  # a helper exited: the server cannot go on without it
            STOPPING=helper
            log "a helper exited (status $rc); stopping pid $MAIN"
            kill -TERM "$MAIN" 2>/dev/null || true
        fi
        wait "$MAIN"  # returns early when a signal comes; then wait again
        rc=$?
    done
    wait "$MAIN" 2>/dev/null  # its status, if bash reaped it while a signal interrupted the wait
    status=$?
    [[ $status -ne 127 ]] && rc=$status
    set -e
    exit "$rc"
}

# --- roles ------------------------------------------------------------------------------------------
if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

case $ROLE in
coordinator)
    backend=${GRADWIRE_BACKEND:-local}
    address=${GRADWIRE_RAY_ADDRESS:-}
    join=${GRADWIRE_RAY_JOIN:-auto}
    if [[ $join == auto ]]; then
        join=no
        [[ $backend == ray && $address == *:* && $address != *://* ]] && join=yes
    fi
    if [[ $join == yes ]]; then
        [[ -n $address && $address != auto ]] || die "GRADWIRE_RAY_JOIN=yes needs GRADWIRE_RAY_ADDRESS=HOST:PORT"
        ray_env
        log "joining the Ray cluster at $address (a node with no CPUs, for the driver)"
        ray start --address "$address" --num-cpus 0 --block &
        PIDS+=($!)
        supervise gradwire serve "$@"
    fi
    log "gradwire serve (backend $backend)"
    exec gradwire serve "$@"
    ;;
ray-head)
    ray_env
    log "Ray head on port $RAY_PORT ($RAY_NUM_CPUS CPU)"
    exec ray start --head --port "$RAY_PORT" --num-cpus "$RAY_NUM_CPUS" --include-dashboard=false --block "$@"
    ;;
ray-worker)
    [[ -n ${RAY_ADDRESS:-} ]] || die "role ray-worker needs RAY_ADDRESS=HOST:PORT of the head"
    ray_env
    log "Ray worker joining $RAY_ADDRESS ($RAY_NUM_CPUS CPU)"
    exec ray start --address "$RAY_ADDRESS" --num-cpus "$RAY_NUM_CPUS" --block "$@"
    ;;
*)
    die "unknown GRADWIRE_ROLE=$ROLE; expected coordinator, ray-head or ray-worker"
    ;;
esac
