"""Open Inference Protocol conformance through the standard Python client (tritonclient, HTTP and gRPC).

Usage: triton_check.py HTTP_HOST:PORT GRPC_HOST:PORT DIR MODEL [MODEL...]
DIR holds x.f32 (float32 rows, 784 wide) and expected.f32 (the model run in-process on them, 10 wide).
For every model and both transports: server live/ready, server metadata, model ready, model metadata, inference
with 1 row and with all rows (binary and JSON tensors over HTTP), outputs within 1e-4 of the expected ones.
Prints one JSON line per (model, transport); exits non-zero with the reason on the first failure.
With AIDOS_TOKEN set, every call presents it (`authorization: Bearer ...`, the way tritonclient users pass a key:
`headers=`), and an inference without it must be refused (HTTP 401 / UNAUTHENTICATED). AIDOS_SERVER_NAME: the
server name to expect in the server metadata (default "aidos").
"""
import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


TOKEN = os.environ.get("AIDOS_TOKEN", "")


def headers():
    """A fresh dict per call: tritonclient's HTTP infer adds Inference-Header-Content-Length to the one it is given."""
    return {"authorization": f"Bearer {TOKEN}"} if TOKEN else None  # gRPC metadata keys are lower case

SERVER_NAME = os.environ.get("AIDOS_SERVER_NAME", "aidos")


def check(client, mod, model, x, expected, transport):
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model, headers=headers()), f"{model} not ready"
    sm = client.get_server_metadata(headers=headers())
    md = client.get_model_metadata(model, headers=headers())
    if transport == "grpc":
        sm = {"name": sm.name, "extensions": list(sm.extensions)}
        md = {"name": md.name, "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in md.inputs],
              "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in md.outputs]}
    assert sm["name"] == SERVER_NAME, sm
    assert md["name"] == model, md
    inp, out = md["inputs"][0], md["outputs"][0]
    assert inp["datatype"] == "FP32" and [int(d) for d in inp["shape"]] == [-1, 784], inp
    assert [int(d) for d in out["shape"]] == [-1, 10], out
    worst = 0.0
    variants = [(1, True), (len(x), True)] + ([(len(x), False)] if transport == "http" else [])
    for rows, binary in variants:
        i = mod.InferInput(inp["name"], [rows, 784], "FP32")
        if transport == "http":
            i.set_data_from_numpy(x[:rows], binary_data=binary)
            outputs = [mod.InferRequestedOutput(out["name"], binary_data=binary)]
        else:
            i.set_data_from_numpy(x[:rows])
            outputs = [mod.InferRequestedOutput(out["name"])]
        r = client.infer(model, [i], outputs=outputs, request_id="req-7", headers=headers())
        got = r.as_numpy(out["name"])
        assert got is not None and got.shape == (rows, 10), f"output shape {None if got is None else got.shape}"
        resp = r.get_response()
        rid = resp["id"] if transport == "http" else resp.id
        assert rid == "req-7", f"response id {rid!r}"
        worst = max(worst, float(np.abs(got - expected[:rows]).max()))
    assert worst <= 1e-4, f"{model} over {transport}: max |served - in-process| = {worst}"
    if TOKEN:
        try:
            client.infer(model, [i], outputs=outputs)
            raise AssertionError(f"{model} over {transport}: an inference without the key was answered")
        except mod.InferenceServerException as e:
            status = str(e.status())
            assert status in ("401", "StatusCode.UNAUTHENTICATED"), f"without the key: {status} {e}"
    return {"model": model, "transport": transport, "max_abs_diff": worst}


def main():
    http_url, grpc_url, d, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    x = np.fromfile(f"{d}/x.f32", dtype="<f4").reshape(-1, 784)
    expected = np.fromfile(f"{d}/expected.f32", dtype="<f4").reshape(len(x), 10)
    h = httpclient.InferenceServerClient(http_url)
    g = grpcclient.InferenceServerClient(grpc_url)
    for model in models:
        print(json.dumps(check(h, httpclient, model, x, expected, "http")))
        print(json.dumps(check(g, grpcclient, model, x, expected, "grpc")))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
