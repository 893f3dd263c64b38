#!/usr/bin/env bash
# Serving through the gateway vs the replica called directly vs FastAPI + onnxruntime, side by side in one run on
# this machine (issue #18). One `aidos server` node and one worker; the reference MLP is trained for one epoch
# (examples/mnist-mlp.toml, epochs = 1) and deployed as one replica; `aidos serve gateway` routes to it; the same
# model exported to ONNX is served by benches/fastapi_onnx.py (1 thread, one inference per request).
#
# HTTP/JSON load: wrk (32 connections, 2 threads, single-sample KServe v2 JSON, WRK_SECONDS each, default 10).
# gRPC load: h2load (nghttp2-client; 32 connections, one request in flight on each, the same ModelInfer message),
# and our tonic client (cargo bench --bench serve_load -- --against ...), through the gateway and direct.
# Server CPU per request: user + system time of the serving processes (gateway + replica on the gateway path) over
# the run, from /proc, divided by the requests answered.
# Keys on vs off (issue #17): the same model is deployed twice, `mlp` (callers present an inference key) and
# `mlp-open` (`--public`: no key), one replica each; both paths are measured in the same run.
# TLS on vs off (issue #17): a second gateway serves HTTPS with a certificate from `aidos cert issue`; the exported
# ONNX model is also served by two standalone `aidos serve run` processes (the server a replica runs), one plain and
# one over TLS. (Replicas inside a deployment, and the gateway's hop to them, are plain TCP: not built.)
#
#   bash benches/gateway.sh          # needs wrk and h2load (apt install wrk nghttp2-client) and the test venv
#                                    # (bash scripts/test.sh)
#   QUICK=1 bash benches/gateway.sh  # the no-key rows of each protocol through the gateway and direct only
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
command -v wrk >/dev/null || { echo "wrk not found: apt install wrk" >&2; exit 1; }
command -v h2load >/dev/null || { echo "h2load not found: apt install nghttp2-client" >&2; exit 1; }
PY="${AIDOS_PYTHON:-$PWD/.venv/bin/python}"
"$PY" -c 'import fastapi, uvicorn' 2>/dev/null || "$PY" -m pip install --quiet fastapi uvicorn
aidos_bin
# The gRPC load generator: the serve_load bench binary (its path from cargo, not a glob that may match a stale build).
LOAD_BIN=$(cargo bench --bench serve_load --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "serve_load" and m.get("executable"):
        print(m["executable"])')
bench_dir
SECS="${WRK_SECONDS:-10}"
start_aidos_node 2
export AIDOS_BLOB_DIR="$DIR/blobs"

"$AIDOS" dataset push mnist data/mnist10k --split train=8000,test=2000 >/dev/null
sed 's/^epochs = 10/epochs = 1/' examples/mnist-mlp.toml >"$DIR/mlp.toml"
"$AIDOS" train "$DIR/mlp.toml" --wait >/dev/null
"$AIDOS" model export mnist-mlp:1 --format onnx -o "$DIR/mlp.onnx" >/dev/null
for name in mlp mlp-open; do
    "$AIDOS" serve deploy mnist-mlp:1 --name "$name" --replicas 1 --cpus 500m --memory 256Mi --wait-secs 120 \
        $([[ $name == mlp-open ]] && echo --public) >/dev/null
done
replica_of() { "$AIDOS" -o json serve list | "$PY" -c '
import json, sys
r = [r for d in json.load(sys.stdin) if d["name"] == sys.argv[1] for r in d["replica_status"] if r["ready"]][0]
print(r["http"], r["grpc"], r["pid"])' "$1"; }
read -r R_HTTP R_GRPC R_PID < <(replica_of mlp)
read -r O_HTTP O_GRPC O_PID < <(replica_of mlp-open)
# An inference key for `mlp` only: what an application is given.
KEY=$("$AIDOS" token create --name bench-app --role infer --deployment mlp 2>/dev/null)

G_HTTP="127.0.0.1:$(port)"; G_GRPC="127.0.0.1:$(port)"
env ${GATEWAY_THREADS:+TOKIO_WORKER_THREADS=$GATEWAY_THREADS} "$AIDOS" serve gateway --http "$G_HTTP" --grpc "$G_GRPC" --log-level warn >"$DIR/gw.log" 2>&1 &
G_PID=$!; PIDS+=($G_PID)
# TLS: a cluster CA and a serving certificate for 127.0.0.1.
"$AIDOS" cert init --dir "$DIR/ca" >/dev/null
"$AIDOS" cert issue --dir "$DIR/ca" --name 127.0.0.1 --name localhost --out "$DIR/serve" >/dev/null
TLS_FLAGS=(--tls-cert "$DIR/serve.pem" --tls-key "$DIR/serve.key")
T_HTTP="127.0.0.1:$(port)"; T_GRPC="127.0.0.1:$(port)"
env ${GATEWAY_THREADS:+TOKIO_WORKER_THREADS=$GATEWAY_THREADS} "$AIDOS" serve gateway --http "$T_HTTP" --grpc "$T_GRPC" "${TLS_FLAGS[@]}" --log-level warn >"$DIR/gw-tls.log" 2>&1 &
T_PID=$!; PIDS+=($T_PID)
S_HTTP="127.0.0.1:$(port)"; ST_HTTP="127.0.0.1:$(port)"
"$AIDOS" serve run --model "mlp=$DIR/mlp.onnx" --http "$S_HTTP" --grpc "127.0.0.1:$(port)" --log-level warn >"$DIR/sa.log" 2>&1 &
S_PID=$!; PIDS+=($S_PID)
"$AIDOS" serve run --model "mlp=$DIR/mlp.onnx" --http "$ST_HTTP" --grpc "127.0.0.1:$(port)" "${TLS_FLAGS[@]}" --log-level warn >"$DIR/sa-tls.log" 2>&1 &
ST_PID=$!; PIDS+=($ST_PID)
F_PORT=$(port)
"$PY" benches/fastapi_onnx.py "$DIR/mlp.onnx" "$F_PORT" >"$DIR/fastapi.log" 2>&1 &
F_PID=$!; PIDS+=($F_PID)

"$PY" - "$DIR/body.json" <<'PYEOF'
import gzip, json, sys
with gzip.open("data/mnist10k/images-idx3-ubyte.gz") as f:
    px = list(f.read()[16 + 784 * 8000:16 + 784 * 8001])
json.dump({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": px}]}, open(sys.argv[1], "w"))
PYEOF
# The same digit as a gRPC ModelInfer message (length-prefixed protobuf), one file per deployment, for h2load.
"$PY" - "$DIR" <<'PYEOF'
import gzip, struct, sys
from tritonclient.grpc import service_pb2 as pb
with gzip.open("data/mnist10k/images-idx3-ubyte.gz") as f:
    px = f.read()[16 + 784 * 8000:16 + 784 * 8001]
for model in ("mlp", "mlp-open"):
    r = pb.ModelInferRequest(model_name=model)
    r.inputs.add(name="input", datatype="FP32", shape=[1, 784])
    r.raw_input_contents.append(struct.pack("<784f", *px))
    m = r.SerializeToString()
    open(f"{sys.argv[1]}/{model}.grpc", "wb").write(b"\0" + struct.pack(">I", len(m)) + m)
PYEOF
cat >"$DIR/post.lua" <<LUAEOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("$DIR/body.json"):read("*a")
LUAEOF
{ cat "$DIR/post.lua"; echo "wrk.headers[\"Authorization\"] = \"Bearer $KEY\""; } >"$DIR/post-key.lua"
for url in "http://$G_HTTP/v2/models/mlp/infer" "http://$G_HTTP/v2/models/mlp-open/infer" "http://127.0.0.1:$F_PORT/v2/models/mlp/infer" \
        "https://$T_HTTP/v2/models/mlp/infer" "http://$S_HTTP/v2/models/mlp/infer" "https://$ST_HTTP/v2/models/mlp/infer"; do
    deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null --cacert "$DIR/ca/ca.pem" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d @"$DIR/body.json" "$url"; do
        (( SECONDS < deadline )) || { echo "$url never answered"; cat "$DIR"/gw*.log "$DIR"/sa*.log "$DIR"/fastapi.log; exit 1; }
        sleep 0.3
    done
done

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
run_wrk() { # label url pids... (a URL of deployment `mlp` is called with the key)
    local label=$1 url=$2; shift 2
    local script="$DIR/post.lua"; [[ $url == */models/mlp/* ]] && script="$DIR/post-key.lua"
    wrk -t2 -c32 -d2s -s "$script" "$url" >/dev/null   # warm-up
    local c0; c0=$(cpu_ticks "$@")
    wrk -t2 -c32 -d"${SECS}s" --latency -s "$script" "$url" >"$DIR/wrk.out"
    local c1; c1=$(cpu_ticks "$@")
    "$PY" - "$label" "$DIR/wrk.out" $((c1 - c0)) <<'PYEOF'
import re, sys
label, path, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = open(path).read()
n = int(re.search(r"(\d+) requests in", t).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def ms(q):
    v, u = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", t).groups()
    return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[u]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
err = re.search(r"Socket errors: (.*)", t)
print(f"{label:<28} {rps:>9.0f} req/s  p50 {ms(50):6.2f} ms  p99 {ms(99):6.2f} ms  server CPU {ticks * 1e4 / max(n, 1):6.1f} us/req"
      f"  non-2xx {bad.group(1) if bad else 0}{'  socket errors: ' + err.group(1) if err else ''}")
PYEOF
}

echo "MNIST MLP 784-256-128-10, single-sample requests, 32 connections, ${SECS}s each ($(nproc) cores, $(date -u +%F))"
echo "HTTP/JSON, wrk -t2 -c32:"
if [[ -z "${QUICK:-}" ]]; then
run_wrk "replica direct, key" "http://$R_HTTP/v2/models/mlp/infer" "$R_PID"
run_wrk "replica direct, no key" "http://$O_HTTP/v2/models/mlp-open/infer" "$O_PID"
if [[ -n "${PERF_GATEWAY:-}" ]]; then  # where the gateway's time goes: perf report -i $PERF_GATEWAY
    perf record -g -o "$PERF_GATEWAY" -p "$G_PID" -- sleep $((SECS + 1)) >/dev/null 2>&1 &
    PERF_PID=$!
fi
run_wrk "through the gateway, key" "http://$G_HTTP/v2/models/mlp/infer" "$G_PID" "$R_PID"
[[ -z "${PERF_PID:-}" ]] || wait "$PERF_PID"
run_wrk "through the gateway, no key" "http://$G_HTTP/v2/models/mlp-open/infer" "$G_PID" "$O_PID"
run_wrk "FastAPI + onnxruntime" "http://127.0.0.1:$F_PORT/v2/models/mlp/infer" "$F_PID"
echo "TLS + key vs plain TCP + no key (HTTP/JSON, wrk -t2 -c32; the connections are kept alive):"
run_wrk "gateway, plain, no key" "http://$G_HTTP/v2/models/mlp-open/infer" "$G_PID" "$O_PID"
run_wrk "gateway, TLS + key" "https://$T_HTTP/v2/models/mlp/infer" "$T_PID" "$R_PID"
run_wrk "serve run, plain" "http://$S_HTTP/v2/models/mlp/infer" "$S_PID"
run_wrk "serve run, TLS" "https://$ST_HTTP/v2/models/mlp/infer" "$ST_PID"
else  # QUICK=1: the no-key pair of each protocol only
run_wrk "replica direct, no key" "http://$O_HTTP/v2/models/mlp-open/infer" "$O_PID"
run_wrk "through the gateway, no key" "http://$G_HTTP/v2/models/mlp-open/infer" "$G_PID" "$O_PID"
fi
# gRPC with a load generator that is not ours: h2load (nghttp2), 32 connections, one request in flight on each,
# the same message every time. h2load sees HTTP statuses only (a gRPC error is HTTP 200 with a grpc-status
# trailer), so the replica's own count of answered requests is checked against h2load's (read once the count
# has stopped moving; requests still in flight when h2load stops, at most 32, may be answered after it, so a
# shortfall smaller than that could hide).
replica_ok() {
    local now last=-1
    while :; do
        now=$(curl -sf "http://$1/metrics" \
            | awk '/^aidos_inference_requests_total/ && /outcome="success"/ {s += $NF} END {printf "%d", s}')
        [[ $now == "$last" ]] && break
        last=$now; sleep 0.2
    done
    echo "$now"
}
run_h2load() { # label grpc-addr model replica-http pids...
    local label=$1 addr=$2 model=$3 rhttp=$4; shift 4
    local auth=(); [[ $model == mlp ]] && auth=(-H "authorization: Bearer $KEY")
    local args=(-c32 -m1 -t2 -d "$DIR/$model.grpc" -H 'content-type: application/grpc' -H 'te: trailers' "${auth[@]}"
        "http://$addr/inference.GRPCInferenceService/ModelInfer")
    h2load -D 2 "${args[@]}" >/dev/null   # warm-up
    local c0 ok0; c0=$(cpu_ticks "$@"); ok0=$(replica_ok "$rhttp")
    h2load -D "$SECS" --log-file="$DIR/h2.log" "${args[@]}" >"$DIR/h2.out"
    local c1 ok1; c1=$(cpu_ticks "$@"); ok1=$(replica_ok "$rhttp")
    "$PY" - "$label" "$DIR/h2.out" "$DIR/h2.log" $((c1 - c0)) $((ok1 - ok0)) <<'PYEOF'
import re, sys
label, out, log, ticks, ok = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
lat = sorted(int(c[2]) for c in (l.split() for l in open(log)) if len(c) == 3 and c[1] == "200")
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else float("nan")
print(f"{label:<28} {rps:>9.0f} req/s  p50 {q(0.5):6.2f} ms  p99 {q(0.99):6.2f} ms  server CPU {ticks * 1e4 / max(done, 1):6.1f} us/req"
      f"  not answered by the replica {max(done - ok, 0)}")
PYEOF
}
echo "gRPC, h2load -t2 -c32 -m1:"
run_h2load "replica direct, no key" "$O_GRPC" mlp-open "$O_HTTP" "$O_PID"
run_h2load "through the gateway, no key" "$G_GRPC" mlp-open "$O_HTTP" "$G_PID" "$O_PID"
[[ -n "${QUICK:-}" ]] && exit 0
run_h2load "replica direct, key" "$R_GRPC" mlp "$R_HTTP" "$R_PID"
run_h2load "through the gateway, key" "$G_GRPC" mlp "$R_HTTP" "$G_PID" "$R_PID"
echo "gRPC, our tonic client (32 concurrent streams):"
grpc_load() { # label http grpc model pids [key]
    echo -n "$1  "
    AIDOS_TOKEN="${6:-}" "$LOAD_BIN" --against "$2,$3" --model "$4" --pids "$5" --transports grpc --concurrency 32 \
        --duration-s "$SECS" | grep grpc
}
grpc_load "replica direct, key        " "$R_HTTP" "$R_GRPC" mlp "$R_PID" "$KEY"
grpc_load "replica direct, no key     " "$O_HTTP" "$O_GRPC" mlp-open "$O_PID"
grpc_load "through the gateway, key   " "$G_HTTP" "$G_GRPC" mlp "$G_PID,$R_PID" "$KEY"
grpc_load "through the gateway, no key" "$G_HTTP" "$G_GRPC" mlp-open "$G_PID,$O_PID"
