#!/usr/bin/env bash
# The jobs list of the HTTP API (and so of the dashboard) with 100,000 jobs in the state (issue #19): one scheduler
# node with its HTTP listener and no worker (every job stays pending), 100,000 jobs submitted in batches, then
# GET /v1/jobs timed for a first page, a deep page, a filter that matches nothing (a full scan) and a name prefix:
#   - latency of one request at a time (Python's urllib, 200 requests each): p50 / p99 / max;
#   - throughput with wrk (8 connections, 10 s) on the first page.
#
#   bash benches/jobs_list.sh            (builds the release binary first; AIDOS_BIN=path skips that)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
aidos_bin
bench_dir
admin_token
GRPC=$(port); HTTP=$(port)
RUST_LOG="${NODE_LOG:-warn}" "$AIDOS" server --id 1 --listen "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" \
    --data-dir "$DIR/n1" --blob-dir "$DIR/blobs" --admin-token-file "$DIR/admin.token" >"$DIR/n1.log" 2>&1 &
PIDS+=($!); disown $!
export AIDOS_SCHEDULER="127.0.0.1:$GRPC"
until "$AIDOS" cluster status 2>/dev/null | grep -q '^leader: *1'; do sleep 0.2; done

echo "== submitting 100,000 jobs (500 per SubmitBatch, 8 clients)"
"$AIDOS" bench submit --jobs 100000 --concurrency 8 --batch 500
"$AIDOS" cluster status | grep -i jobs

python3 - "http://127.0.0.1:$HTTP" "$AIDOS_TOKEN" <<'PY'
import json, sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
def get(path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())
first = get("/v1/jobs?limit=50")
assert first["total"] == "100000", first["total"]
# A page in the middle: follow the tokens 1,000 pages deep (50,000 jobs in).
page = first
for _ in range(999):
    page = get(f"/v1/jobs?limit=50&page_token={page['nextPageToken']}")
deep = page["nextPageToken"]
cases = [
    ("first page, 50 jobs", "/v1/jobs?limit=50"),
    ("page 1,001 (50,000 jobs in)", f"/v1/jobs?limit=50&page_token={deep}"),
    ("state=running (matches none: a full scan)", "/v1/jobs?state=running&limit=50"),
    ("name prefix bench, kind=process, 1,000 per page", "/v1/jobs?name=bench&kind=process&limit=1000"),
]
for name, path in cases:
    times = []
    for _ in range(200):
        t = time.perf_counter(); get(path); times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{name:52s} p50 {times[100]:6.2f} ms   p99 {times[197]:6.2f} ms   max {times[-1]:6.2f} ms")

# A run with the most points a run keeps (200,000, one series), logged through the MLflow API 1,000 at a time, read
# whole and downsampled to what a chart draws.
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())
run = post("/api/2.0/mlflow/runs/create", {"experiment_id": "0", "run_name": "long-series"})["run"]["info"]["run_id"]
t0 = time.perf_counter()
for k in range(200):
    pts = [{"key": "loss", "value": 1.0 / (1 + k * 1000 + i), "step": k * 1000 + i, "timestamp": 0} for i in range(1000)]
    post("/api/2.0/mlflow/runs/log-batch", {"run_id": run, "metrics": pts})
print(f"logged 200,000 points in {time.perf_counter() - t0:.1f} s")
for name, path in [("run of 200,000 points, downsampled to 400", f"/v1/runs/{run}?max_points=400"),
                   ("run of 200,000 points, every point", f"/v1/runs/{run}")]:
    times = []
    n = 20 if "every" in name else 100
    for _ in range(n):
        t = time.perf_counter(); r = get(path); times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{name:52s} p50 {times[n // 2]:6.2f} ms   max {times[-1]:7.2f} ms   ({len(r['metrics'])} points)")
PY
echo "== wrk: first page, 8 connections, 10 s"
wrk -t 2 -c 8 -d 10s -H "Authorization: Bearer $AIDOS_TOKEN" "http://127.0.0.1:$HTTP/v1/jobs?limit=50" | grep -E "Latency|Req/Sec|Requests/sec|requests in"
