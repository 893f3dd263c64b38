#!/usr/bin/env bash
# The first command on a fresh machine: builds aidos, starts a local one-node cluster (scheduler + worker in one
# process) on a free loopback port with a throwaway data dir, runs three jobs, shows their list and output, and
# stops the cluster. Exits 0 when every job succeeded.
#
#   bash scripts/demo.sh
#
# AIDOS_BIN=path/to/aidos skips the release build and uses that binary instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${AIDOS_BIN:-}" ]]; then
    AIDOS="$AIDOS_BIN"
else
    cargo build --release --bin aidos
    AIDOS=target/release/aidos
fi

DATA_DIR="$(mktemp -d)"
UP_PID=""
cleanup() {
    if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
        kill -TERM "$UP_PID" 2>/dev/null || true
        wait "$UP_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "starting: aidos up --data-dir $DATA_DIR --listen 127.0.0.1:0"
"$AIDOS" up --data-dir "$DATA_DIR" --listen 127.0.0.1:0 >"$DATA_DIR/up.log" 2>&1 &
UP_PID=$!

# The scheduler prints "scheduler listening on ADDR" once bound; then wait until it answers.
ADDR=""
deadline=$((SECONDS + 60))
while [[ -z "$ADDR" ]]; do
    if ! kill -0 "$UP_PID" 2>/dev/null; then
        echo "aidos up exited early:" >&2
        cat "$DATA_DIR/up.log" >&2
        exit 1
    fi
    ADDR="$(sed -n 's/^scheduler listening on //p' "$DATA_DIR/up.log" | head -n1)"
    if (( SECONDS > deadline )); then
        echo "aidos up did not start within 60s:" >&2
        cat "$DATA_DIR/up.log" >&2
        exit 1
    fi
    [[ -n "$ADDR" ]] || sleep 0.2
done
export AIDOS_SCHEDULER="$ADDR"
until "$AIDOS" cluster status >/dev/null 2>&1; do
    if (( SECONDS > deadline )) || ! kill -0 "$UP_PID" 2>/dev/null; then
        echo "the scheduler at $ADDR does not answer:" >&2
        cat "$DATA_DIR/up.log" >&2
        exit 1
    fi
    sleep 0.5
done
step "aidos cluster status"
"$AIDOS" cluster status

step "submitting 3 jobs"
HELLO=$("$AIDOS" job submit --name hello --replicas 2 --cpu 100m --memory 64Mi -- \
    sh -c 'echo hello from rank $AIDOS_RANK of $AIDOS_WORLD_SIZE')
echo "hello: $HELLO"
SLEEPY=$("$AIDOS" job submit --name sleepy --cpu 100m --memory 64Mi -- sh -c 'sleep 1; echo slept one second')
echo "sleepy: $SLEEPY"
cat >"$DATA_DIR/job.toml" <<'TOML'
name = "from-a-spec"
replicas = 1
[resources]
cpu = "100m"
memory = "64Mi"
[labels]
demo = "yes"
[process]
executable = "sh"
args = ["-c", "echo from a spec file; echo this line goes to stderr >&2"]
TOML
SPEC=$("$AIDOS" job submit "$DATA_DIR/job.toml")
echo "from-a-spec: $SPEC"

step "waiting for them"
for id in "$HELLO" "$SLEEPY" "$SPEC"; do
    "$AIDOS" job wait "$id" --timeout-secs 120
done

step "aidos job list"
"$AIDOS" job list

step "aidos job logs $HELLO"
LOGS="$("$AIDOS" job logs "$HELLO")"
echo "$LOGS"
grep -q "hello from rank 0 of 2" <<<"$LOGS"
grep -q "hello from rank 1 of 2" <<<"$LOGS"

step "aidos job status $SPEC"
"$AIDOS" job status "$SPEC"

step "stopping the cluster"
kill -TERM "$UP_PID"
wait "$UP_PID"
UP_PID=""
echo "demo finished: all jobs succeeded"
