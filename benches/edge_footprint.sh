#!/usr/bin/env bash
# Edge agent footprint (issue #5): stripped binary size, resident memory while serving the MNIST CNN, cold start
# (process start to first answered inference, model in the cache, control plane unreachable), and per-inference
# latency against Python onnxruntime on the same ONNX file with one thread; the agent runs on tract, and on ort too
# when ORT_DYLIB_PATH names an ONNX Runtime library.
#
#   bash benches/edge_footprint.sh          # needs the test venv (bash scripts/test.sh creates .venv)
#   ORT_DYLIB_PATH=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*) bash benches/edge_footprint.sh
#
# The CNN is the reference architecture trained for one epoch on data/mnist10k by a local `aidos up`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${AIDOS_PYTHON:-.venv/bin/python}"
# The agent as it ships (profile `edge`: LTO, size-optimised except tract's kernels, stripped); the CLI (to train
# and export the model) as usual, with the ort runtime when a library is given (for the latency comparison).
cargo build --profile edge -p aidos-edge
if [[ -n "${ORT_DYLIB_PATH:-}" ]]; then cargo build --release --features ort --bin aidos; else cargo build --release --bin aidos; fi
AIDOS=target/release/aidos
W="$(mktemp -d)"
UP_PID=""
cleanup() { if [[ -n "$UP_PID" ]]; then kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi; rm -rf "$W"; }
trap cleanup EXIT

# 1. The model: the reference CNN, one epoch, exported to ONNX (and stored: its blob id is its BLAKE3 hash).
"$AIDOS" up --data-dir "$W/up" --listen 127.0.0.1:0 --no-gateway >"$W/up.log" 2>&1 &
UP_PID=$!
ADDR=""
while [[ -z "$ADDR" ]]; do sleep 0.2; ADDR="$(sed -n 's/^scheduler listening on //p' "$W/up.log" | head -n1)"; done
export AIDOS_SCHEDULER="$ADDR" AIDOS_BLOB_DIR="$W/up/blobs" AIDOS_TOKEN="$(cat "$W/up/admin.token")"
until "$AIDOS" cluster status >/dev/null 2>&1; do sleep 0.3; done
"$AIDOS" dataset push mnist data/mnist10k --split train=8000,test=2000 >/dev/null
sed -e 's/^epochs = 8/epochs = 1/' examples/mnist-cnn.toml >"$W/cnn.toml"
"$AIDOS" train "$W/cnn.toml" --follow >/dev/null
"$AIDOS" model export mnist-cnn:1 --format onnx -o "$W/cnn.onnx" >/dev/null
HASH=$("$AIDOS" -o json model show mnist-cnn:1 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["artifacts"]["onnx"])')
kill -TERM "$UP_PID"; wait "$UP_PID" || true; UP_PID=""

# 2. A cache holding it as the running model (what an agent has after a deployment).
mkdir -p "$W/cache/models" "$W/cache/partial"
cp "$W/cnn.onnx" "$W/cache/models/$HASH.onnx"
cat >"$W/cache/state.json" <<JSON
{"pinned_key_hex": null, "current": {"deployment": "mnist-cnn", "model": "mnist-cnn", "version": 1,
 "artifact": "$HASH", "signature_hex": ""}, "previous": null, "rejected": {}}
JSON

# 3. Stripped size; then cold start, resident memory and latency (the control plane address is unreachable).
cp target/edge/aidos-edge "$W/aidos-edge"
TRACT=$("$AIDOS" bench runtime --model "$W/cnn.onnx" --runtime tract --iters 2000)
if [[ -n "${ORT_DYLIB_PATH:-}" ]]; then
    TRACT="$TRACT; $("$AIDOS" bench runtime --model "$W/cnn.onnx" --runtime ort --iters 2000)"
fi
"$PY" - "$W" "$(stat -c %s "$W/aidos-edge")" "$TRACT" <<'PY'
import json, os, socket, subprocess, sys, time
import numpy as np
import onnxruntime as ort

w, size, tract = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = (np.arange(784) % 97 / 97).astype(np.float32).reshape(1, 784)
body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": x.ravel().tolist()}]}).encode()
req = b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body

def infer(sock):
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < n:
        rest += sock.recv(65536)
    return head.split(b" ")[1] == b"200"

def agent(runtime, *extra):
    """Cold start (ms), resident memory (MB) and sorted per-request latencies (us) of the agent on `runtime`."""
    ready = f"{w}/ready-{runtime}{len(extra)}.json"
    t0 = time.perf_counter()
    p = subprocess.Popen([f"{w}/aidos-edge", "--server", "127.0.0.1:9", "--device", "bench", "--cache", f"{w}/cache",
                          "--listen", "127.0.0.1:0", "--runtime", runtime, "--ready-file", ready, *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                addr = json.load(open(ready))["http"]
                host, port = addr.rsplit(":", 1)
                s = socket.create_connection((host, int(port)))
                if infer(s):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.001)
        cold = (time.perf_counter() - t0) * 1000
        lat = []
        for _ in range(2000):
            t = time.perf_counter()
            assert infer(s)
            lat.append((time.perf_counter() - t) * 1e6)
        rss = int([l.split()[1] for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0]) / 1024
    finally:
        p.terminate(); p.wait()
    return cold, rss, sorted(lat)

rts = ["tract", "ort"] if os.environ.get("ORT_DYLIB_PATH") else ["tract"]
runs = {rt: agent(rt) for rt in rts}
# The same with the pages start-up touched kept resident (the agent releases them after loading a model).
kept = {rt: agent(rt, "--keep-startup-pages")[1] for rt in rts}
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
sess = ort.InferenceSession(f"{w}/cnn.onnx", so, providers=["CPUExecutionProvider"])
for _ in range(100):
    sess.run(None, {"input": x})
olat = []
for _ in range(2000):
    t = time.perf_counter(); sess.run(None, {"input": x}); olat.append((time.perf_counter() - t) * 1e6)
olat.sort()
print(f"stripped binary: {size / 1e6:.1f} MB")
for rt, (cold, rss, lat) in runs.items():
    print(f"agent --runtime {rt}: cold start to first answered inference (cached CNN, control plane unreachable) "
          f"{cold:.0f} ms; resident memory after 2000 inferences {rss:.1f} MB "
          f"({kept[rt]:.1f} MB with --keep-startup-pages); "
          f"over HTTP/JSON, 1 connection: p50 {lat[1000]:.0f} us, p99 {lat[1980]:.0f} us")
print(f"in-process runtime: {tract}")
print(f"onnxruntime {ort.__version__} in-process, 1 thread: p50 {olat[1000]:.0f} us, p99 {olat[1980]:.0f} us")
PY
