"""Checks aidos ONNX exports with the reference tools (issue: ONNX export).

Usage: check_onnx.py DIR NAME [NAME...]
DIR holds, per NAME: NAME.onnx, NAME-int8.onnx, NAME_burn.f32 (burn's logits on the test images), plus
test_x.f32 (raw test features, float32 rows) and test_y.u8 (labels). Prints one JSON line per model; exits
non-zero on the first failed check, with the reason.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    d, names = sys.argv[1], sys.argv[2:]
    y = np.fromfile(f"{d}/test_y.u8", dtype=np.uint8).astype(np.int64)
    x = np.fromfile(f"{d}/test_x.f32", dtype="<f4").reshape(len(y), -1)
    for name in names:
        ref = np.fromfile(f"{d}/{name}_burn.f32", dtype="<f4").reshape(len(y), -1)
        model = onnx.load(f"{d}/{name}.onnx")
        onnx.checker.check_model(model, full_check=True)
        opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
        assert opset >= 17, f"{name}: opset {opset} < 17"
        inp = model.graph.input[0]
        dim0 = inp.type.tensor_type.shape.dim[0]
        assert dim0.dim_param, f"{name}: batch dimension is not symbolic: {dim0}"
        assert not {i.name for i in model.graph.initializer} & {i.name for i in model.graph.input}, "weights listed as inputs"
        s = session(f"{d}/{name}.onnx")
        out = s.run(["logits"], {"input": x})[0]
        diff = float(np.abs(out - ref).max())
        assert diff <= 1e-4, f"{name}: max |onnxruntime - burn| = {diff} > 1e-4"
        same = int((out.argmax(1) == ref.argmax(1)).sum())
        assert same == len(y), f"{name}: predicted class differs on {len(y) - same} of {len(y)} images"
        # The batch dimension really is dynamic: 1 and 7 rows give the same rows.
        for b in (1, 7):
            ob = s.run(["logits"], {"input": x[:b]})[0]
            assert np.abs(ob - out[:b]).max() <= 1e-4, f"{name}: batch {b} differs"
        acc = float((out.argmax(1) == y).mean())
        q = onnx.load(f"{d}/{name}-int8.onnx")
        onnx.checker.check_model(q, full_check=True)
        out8 = session(f"{d}/{name}-int8.onnx").run(["logits"], {"input": x})[0]
        acc8 = float((out8.argmax(1) == y).mean())
        assert acc - acc8 <= 0.01, f"{name}: int8 loses {100 * (acc - acc8):.2f} points (> 1)"
        print(json.dumps({"model": name, "opset": opset, "max_abs_diff": diff, "same_class": same, "images": len(y),
                          "accuracy": acc, "int8_accuracy": acc8, "onnxruntime": ort.__version__,
                          "onnx": onnx.__version__}))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
