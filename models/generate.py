#!/usr/bin/env python3
"""Regenerate the demo models, sample data and expected outputs in models/.

    python3 -m venv /tmp/mg && /tmp/mg/bin/pip install -r models/requirements.txt
    /tmp/mg/bin/python models/generate.py

Everything is deterministic (fixed seeds). The gateway never needs these packages: the .onnx
files, the samples and the expected outputs are committed.
"""
import json
import pathlib

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = pathlib.Path(__file__).resolve().parent
SEED = 42


def save(model, name):
    path = HERE / name
    path.write_bytes(model.SerializeToString())
    return path


def run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def tolist(a):
    return np.asarray(a).tolist()


def halves():
    """halves.onnx: FP16, BF16 and BYTES (ONNX string) through ORT, for the binary extension's
    tests. FP16 is also cast to FP32 so that a test sees ORT read the half-precision bits."""
    ins = [helper.make_tensor_value_info("h16", TensorProto.FLOAT16, ["batch", 2]),
           helper.make_tensor_value_info("b16", TensorProto.BFLOAT16, ["batch", 2]),
           helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])]
    outs = [helper.make_tensor_value_info("h16_out", TensorProto.FLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("h16_as_f32", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b16_out", TensorProto.BFLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("text_out", TensorProto.STRING, ["batch"])]
    nodes = [helper.make_node("Identity", ["h16"], ["h16_out"]),
             helper.make_node("Cast", ["h16"], ["h16_as_f32"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["b16"], ["b16_out"]),
             helper.make_node("Identity", ["text"], ["text_out"])]
    m = helper.make_model(helper.make_graph(nodes, "halves", ins, outs),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    path = save(m, "halves.onnx")
    # A check, not a recording: every value below is exact in half precision, so the Rust tests
    # state them directly. numpy has no bfloat16: BF16 goes in as its raw uint16 bits.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    b16 = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        np.array([[0x3FC0, 0xC000]], np.uint16), TensorProto.BFLOAT16)  # 1.5, -2.0
    h16_out, as_f32, text = sess.run(["h16_out", "h16_as_f32", "text_out"], {
        "h16": np.array([[1.5, -0.25]], np.float16), "b16": b16, "text": np.array(["héllo"], object)})
    assert as_f32.tolist() == [[1.5, -0.25]] and h16_out.tolist() == [[1.5, -0.25]], (h16_out, as_f32)
    assert text.tolist() == ["héllo"], text
    return path


def mlp(expected):
    """mlp-batching.onnx: a 256 -> 2048 -> 1024 -> 16 ReLU MLP, about 2.6 million FP32 weights
    (random, seeded; not trained). One row at a time it reads all its weights per row; a batch
    reads them once for every row: the model on which dynamic batching pays off on a CPU."""
    rng = np.random.default_rng(SEED)
    sizes = [256, 2048, 1024, 16]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.01).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"), onnx.numpy_helper.from_array(bias, f"b{i}")]
        out = "scores" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}" if out != "scores" else out]))
        if out != "scores":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.doc_string = "mlp-batching: 256-2048-1024-16 ReLU MLP, random weights (seed 42), for dynamic batching"
    onnx.checker.check_model(m)
    path = save(m, "mlp-batching.onnx")
    few = rng.standard_normal((3, sizes[0])).astype(np.float32)
    got = run(path, {"x": few})
    # Rows for the load generator (`loadtest --samples`): the batching benchmark's requests.
    rows = rng.standard_normal((32, sizes[0])).astype(np.float32)
    (HERE / "mlp-batching-samples.json").write_text(json.dumps(
        {"input": "x", "samples": [{"features": [round(float(v), 4) for v in r], "label": 0} for r in rows]}) + "\n")
    expected["mlp-batching"] = {
        "inputs": {"x": {"datatype": "FP32", "shape": list(few.shape), "data": tolist(few.ravel())}},
        "outputs": {"scores": {"datatype": "FP32", "shape": list(got["scores"].shape),
                               "data": tolist(got["scores"].ravel())}},
    }


def main():
    expected = {}

    # --- breast cancer: two versions of one model, same signature --------------------------
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=SEED, stratify=y)

    # v1 is deliberately weaker (a strong L2 penalty: about 90% against v2's 94% on the holdout),
    # so that A/B tests on accuracy have a real difference to find.
    v1 = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=1000))
    v2 = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=SEED)
    accuracy = {}
    for name, clf in (("breast-cancer-v1", v1), ("breast-cancer-v2", v2)):
        clf.fit(x_tr, y_tr)
        onx = convert_sklearn(
            clf,
            initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
            options={id(clf): {"zipmap": False}} if not hasattr(clf, "steps")
            else {id(clf.steps[-1][1]): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        onx.doc_string = f"{name}: {type(clf).__name__} on sklearn breast-cancer, seed {SEED}"
        path = save(onx, f"{name}.onnx")
        out = run(path, {"input": x_te})
        acc = float((out["label"] == y_te).mean())
        accuracy[name] = acc
        few = x_te[:5]
        got = run(path, {"input": few})
        expected[name] = {
            "inputs": {"input": {"datatype": "FP32", "shape": list(few.shape), "data": tolist(few.ravel())}},
            "outputs": {
                "label": {"datatype": "INT64", "shape": list(got["label"].shape), "data": tolist(got["label"].ravel())},
                "probabilities": {"datatype": "FP32", "shape": list(got["probabilities"].shape),
                                  "data": tolist(got["probabilities"].ravel())},
            },
            "holdout_accuracy": acc,
        }

    samples = [{"features": tolist(row), "label": int(lbl)} for row, lbl in zip(x_te, y_te)]
    (HERE / "breast-cancer-holdout.json").write_text(json.dumps(
        {"dataset": "sklearn.datasets.load_breast_cancer", "split": f"test_size=0.3 random_state={SEED} stratified",
         "input": "input", "datatype": "FP32", "features": int(x.shape[1]), "samples": samples}) + "\n")

    # --- diabetes regression: a different signature (FP64 in, FP64 out) --------------------
    dx, dy = load_diabetes(return_X_y=True)
    dx_tr, dx_te, dy_tr, _ = train_test_split(dx, dy, test_size=0.3, random_state=SEED)
    reg = LinearRegression().fit(dx_tr, dy_tr)
    onx = convert_sklearn(reg, initial_types=[("features", DoubleTensorType([None, dx.shape[1]]))],
                          target_opset={"": 17, "ai.onnx.ml": 3})
    onx.doc_string = "diabetes-v1: LinearRegression on sklearn diabetes"
    path = save(onx, "diabetes-v1.onnx")
    few = dx_te[:4]
    got = run(path, {"features": few})
    (oname, oval), = got.items()
    expected["diabetes-v1"] = {
        "inputs": {"features": {"datatype": "FP64", "shape": list(few.shape), "data": tolist(few.ravel())}},
        "outputs": {oname: {"datatype": "FP64", "shape": list(oval.shape), "data": tolist(oval.ravel())}},
    }

    # --- datatypes: a tiny graph that passes INT32/INT64/BOOL/FP32/FP64 through --------------
    # Not trained: it exists so that tests cover every OIP datatype end to end through ORT.
    kinds = [("i32", TensorProto.INT32), ("i64", TensorProto.INT64), ("flag", TensorProto.BOOL),
             ("f32", TensorProto.FLOAT), ("f64", TensorProto.DOUBLE)]
    nodes, ins, outs = [], [], []
    for n, t in kinds:
        ins.append(helper.make_tensor_value_info(n, t, ["batch", 2]))
        outs.append(helper.make_tensor_value_info(f"{n}_out", t, ["batch", 2]))
        nodes.append(helper.make_node("Identity", [n], [f"{n}_out"]))
    graph = helper.make_graph(nodes, "dtypes", ins, outs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    save(m, "dtypes.onnx")

    halves()
    mlp(expected)

    (HERE / "expected-outputs.json").write_text(json.dumps(
        {"generator": "models/generate.py", "onnxruntime": ort.__version__, "models": expected}, indent=1) + "\n")
    print(json.dumps(accuracy))


if __name__ == "__main__":
    main()
