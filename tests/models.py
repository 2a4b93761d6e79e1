"""Tiny ONNX models built in code for fast pass tests (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D_IN, D_HID, D_OUT = 16, 24, 8


def mlp_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((D_IN, D_HID)).astype(np.float32) / 4,
        "b1": rng.standard_normal(D_HID).astype(np.float32),
        "w2": rng.standard_normal((D_HID, D_OUT)).astype(np.float32) / 5,
    }


def mlp_model(opset: int = 21, *, constant_node_weight: bool = False) -> onnx.ModelProto:
    """x (b, s, 16) -> MatMul w1 -> Add b1 -> Relu -> MatMul w2 -> y (b, s, 8), plus an
    activation x activation MatMul (x x^T, attention-like) whose output is a second output."""
    w = mlp_weights()
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="act"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="fc2"),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="xt"),
        helper.make_node("MatMul", ["x", "xt"], ["scores"], name="scores"),
    ]
    inits = [numpy_helper.from_array(w["w1"], "w1"), numpy_helper.from_array(w["b1"], "b1")]
    if constant_node_weight:
        nodes.insert(0, helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w["w2"]), name="w2_const"))
    else:
        inits.append(numpy_helper.from_array(w["w2"], "w2"))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D_IN])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", D_OUT]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "seq", "seq"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def gemm_model() -> onnx.ModelProto:
    """x (s, 16) -> Gemm(W^T, C, transB=1) -> y (s, 8): a 2-D linear layer with a bias."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((D_OUT, D_IN)).astype(np.float32) / 4
    c = rng.standard_normal(D_OUT).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, name="gemm")],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", D_OUT])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def attention_only_model() -> onnx.ModelProto:
    """Only an activation x activation MatMul: nothing to rewrite."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="ab")],
        "attn",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["s", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["s", "s"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
