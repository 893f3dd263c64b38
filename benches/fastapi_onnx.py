"""The seed's serving stack, for benches/gateway.sh: FastAPI + onnxruntime (1 thread, one inference per request),
answering Open Inference Protocol v2 JSON infer requests for one ONNX model.

    python benches/fastapi_onnx.py MODEL.onnx PORT
"""
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name
out = sess.get_outputs()[0].name
app = FastAPI()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, req: Request):
    body = await req.json()
    t = body["inputs"][0]
    x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
    y = sess.run([out], {inp: x})[0]
    return {"model_name": name, "outputs": [
        {"name": out, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", workers=1)
