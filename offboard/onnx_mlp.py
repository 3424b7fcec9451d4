"""An MLP soft-Q written straight to ONNX from NumPy weights (onnx.helper, no torch).

For tests and benchmarks that need a Q of a given shape, and as the independent reference the
torch export is checked against. The graph: concat(obs, act) -> (Gemm, tanh) x hidden -> Gemm -> q[N].
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onboard.qfunction import save_q_model


def random_mlp(rng: np.random.Generator, in_dim: int, hidden=(100, 100), scale: float = 1.0):
    """Glorot-uniform weights [(W (in, out), b (out,)), ...] ending in one output."""
    layers, sizes = [], [in_dim, *hidden, 1]
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        limit = scale * np.sqrt(6.0 / (n_in + n_out))
        layers.append((rng.uniform(-limit, limit, (n_in, n_out)), rng.uniform(-0.1, 0.1, n_out)))
    return layers


def mlp_forward(layers, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    """The same network in NumPy float64: the direct computation the ONNX runner is checked against."""
    x = np.concatenate([obs, act], axis=-1)
    for i, (W, b) in enumerate(layers):
        x = x @ W + b
        if i < len(layers) - 1:
            x = np.tanh(x)
    return x[..., 0]


def mlp_onnx(layers, obs_dim: int, act_dim: int, obs_name="obs", act_name="act", out_name="q") -> bytes:
    """Serialized ONNX model computing mlp_forward in float32 with a dynamic batch axis."""
    nodes = [helper.make_node("Concat", [obs_name, act_name], ["x0"], axis=1)]
    init = []
    x = "x0"
    for i, (W, b) in enumerate(layers):
        init += [
            numpy_helper.from_array(W.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Tanh", [x], [f"a{i}"]))
            x = f"a{i}"
    init.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    nodes.append(helper.make_node("Reshape", [x, "flat"], [out_name]))
    graph = helper.make_graph(
        nodes,
        "mpq_q_mlp",
        [
            helper.make_tensor_value_info(obs_name, TensorProto.FLOAT, ["batch", obs_dim]),
            helper.make_tensor_value_info(act_name, TensorProto.FLOAT, ["batch", act_dim]),
        ],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch"])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mpq")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def save_random_q(task, hidden, path, rng: np.random.Generator, producer: str):
    """A random MLP Q for `task` saved as a verified q.onnx + q.json at `path` (benchmarks); its layers."""
    layers = random_mlp(rng, task.obs_dim + task.act_dim, hidden)
    save_q_model(mlp_onnx(layers, task.obs_dim, task.act_dim), path, task, {"name": producer})
    return layers
