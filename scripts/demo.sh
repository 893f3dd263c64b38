#!/usr/bin/env bash
# The first command on a fresh machine: builds aidos, starts a local one-node cluster (scheduler + worker in one
# process) on a free loopback port with a throwaway data dir, pushes MNIST (data/mnist10k) as a dataset version,
# trains the reference MLP on it as a `train` job, and ends with the registered model and its test accuracy (plus a
# small gang of `process` jobs), exports it to ONNX, deploys it as 2 serving replicas and classifies three digits
# through the gateway that `aidos up` runs on 127.0.0.1:8000 (HTTP) and :8001 (gRPC). Exits 0 when everything
# succeeded. Other gateway ports: AIDOS_UP_SERVE_HTTP / AIDOS_UP_SERVE_GRPC.
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
# `aidos up` wrote its admin token there (mode 0600); the CLI finds ./.aidos/admin.token by itself, this data
# directory it is told.
export AIDOS_TOKEN="$(cat "$DATA_DIR/admin.token")"
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
export AIDOS_BLOB_DIR="$DATA_DIR/blobs"

step "aidos dataset push mnist data/mnist10k --split train=8000,test=2000"
"$AIDOS" dataset push mnist data/mnist10k --split train=8000,test=2000
"$AIDOS" dataset show mnist@v1

step "a gang of 2 process replicas"
HELLO=$("$AIDOS" job submit --name hello --replicas 2 --cpu 100m --memory 64Mi -- \
    sh -c 'echo hello from rank $AIDOS_RANK of $AIDOS_WORLD_SIZE')
"$AIDOS" job wait "$HELLO" --timeout-secs 120
"$AIDOS" job logs "$HELLO"

step "aidos train examples/mnist-mlp.toml --follow"
"$AIDOS" train examples/mnist-mlp.toml --follow
JOB=$("$AIDOS" -o json job list --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["id"])')

step "aidos run show $JOB"
"$AIDOS" run show "$JOB"
"$AIDOS" run metrics "$JOB" --metric val_accuracy
mkdir -p .aidos && "$AIDOS" run metrics "$JOB" --png .aidos/demo-curves.png

step "the registry"
"$AIDOS" model list
"$AIDOS" model alias mnist-mlp@production 1
"$AIDOS" model show mnist-mlp@production
ACC=$("$AIDOS" -o json model show mnist-mlp@production | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["test_accuracy"])')

step "aidos model eval mnist-mlp@production --dataset mnist@v1 --split test"
"$AIDOS" model eval mnist-mlp@production --dataset mnist@v1 --split test

step "aidos model export mnist-mlp@production --format onnx -o $DATA_DIR/mnist-mlp.onnx"
"$AIDOS" model export mnist-mlp@production --format onnx -o "$DATA_DIR/mnist-mlp.onnx"

step "aidos serve deploy mnist-mlp@production --replicas 2 (replicas placed on the worker, routed by the gateway of aidos up)"
"$AIDOS" serve deploy mnist-mlp@production --replicas 2 --cpus 500m --memory 256Mi --wait-secs 120
"$AIDOS" serve list
GATEWAY="$(sed -n 's/^gateway serving deployments on HTTP \(http:[^ ]*\) and gRPC .*/\1/p' "$DATA_DIR/up.log" | head -n1)"
# Three digits from the held-out part of data/mnist10k, as rows of 784 pixel values in [0, 1] (how the dataset
# stores IDX images; the exported graph applies the model's standardization itself).
python3 - "$DATA_DIR/digits.json" <<'PY'
import gzip, json, sys
raw = gzip.open("data/mnist10k/images-idx3-ubyte.gz").read()[16:]
labels = gzip.open("data/mnist10k/labels-idx1-ubyte.gz").read()[8:]
rows = [[p / 255 for p in raw[(9000 + i) * 784:(9001 + i) * 784]] for i in range(3)]
json.dump(rows, open(sys.argv[1], "w"))
print("true labels:", [labels[9000 + i] for i in range(3)])
PY
# The gateway reads the replica list from the scheduler every 250 ms.
for _ in $(seq 1 50); do "$AIDOS" infer mnist-mlp --input "$DATA_DIR/digits.json" --url "$GATEWAY" >/dev/null 2>&1 && break; sleep 0.2; done
step "aidos infer mnist-mlp --url $GATEWAY (Open Inference Protocol; gRPC on the next port)"
"$AIDOS" infer mnist-mlp --input "$DATA_DIR/digits.json" --url "$GATEWAY"

step "aidos serve delete mnist-mlp (replicas drain and stop; tasks outlive their worker, so stop them first)"
"$AIDOS" serve delete mnist-mlp
sleep 2   # a stopped replica serves one more second (gateways stop routing to it), then drains and exits

step "stopping the cluster"
kill -TERM "$UP_PID"
wait "$UP_PID" || true
UP_PID=""
echo
echo "demo finished: model mnist-mlp:1 (alias production) registered, test accuracy $ACC on mnist@v1 (2,000 held-out digits), exported to ONNX, deployed as 2 replicas and served at $GATEWAY"
