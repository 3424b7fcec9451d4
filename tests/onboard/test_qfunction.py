"""The ONNX Q on the robot: same numbers as the network, and one clear refusal for each bad model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from offboard.onnx_mlp import mlp_forward, mlp_onnx, random_mlp
from onboard.qfunction import ModelError, OnnxQ, manifest_path, read_manifest, save_q_model
from onboard.tasks import get_task

PENDULUM = get_task("pendulum")


@pytest.mark.parametrize("batch", [1, 7, 1000])
@pytest.mark.parametrize("threads", [1, 2])
def test_runner_matches_direct_computation_at_any_batch_size(make_q, batch, threads):
    path, layers = make_q("pendulum", hidden=(64, 64))
    q = OnnxQ(path, PENDULUM, threads=threads)
    rng = np.random.default_rng(batch)
    obs = rng.standard_normal((batch, 3))
    act = rng.uniform(-2, 2, (batch, 1))
    out = q(obs, act)
    assert out.shape == (batch,) and out.dtype == np.float64
    np.testing.assert_allclose(out, mlp_forward(layers, obs, act), rtol=1e-5, atol=1e-5)


def test_manifest_records_what_the_robot_checks(make_q):
    path, _ = make_q("cartpole")
    manifest = read_manifest(path)
    assert manifest["task"] == "cartpole"
    assert (manifest["obs_dim"], manifest["act_dim"]) == (5, 1)
    assert manifest["inputs"] == {"obs": "obs", "act": "act"} and manifest["output"] == "q"
    assert manifest["producer"] == {"name": "tests"}
    assert OnnxQ(path, get_task("cartpole")).sha256 == manifest["onnx_sha256"]


def refusal(path, task=PENDULUM) -> str:
    with pytest.raises(ModelError) as info:
        OnnxQ(path, task)
    message = str(info.value)
    assert "\n" not in message
    assert str(path.parent) in message  # names the file (the model or its manifest)
    return message


def test_refuses_a_missing_model_file(tmp_path):
    assert "missing model file" in refusal(tmp_path / "q.onnx")


def test_refuses_a_model_without_its_manifest(make_q):
    path, _ = make_q()
    manifest_path(path).unlink()
    assert "missing manifest" in refusal(path)


def test_refuses_an_unreadable_manifest(make_q):
    path, _ = make_q()
    manifest_path(path).write_text("{not json")
    assert "unreadable manifest" in refusal(path)


def test_refuses_a_model_whose_bytes_changed(make_q):
    path, _ = make_q()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert "sha256" in refusal(path)


def test_refuses_another_tasks_model(make_q):
    path, _ = make_q("cartpole")
    message = refusal(path, PENDULUM)
    assert "'cartpole'" in message and "'pendulum'" in message


def test_refuses_a_dims_mismatch(make_q):
    path, _ = make_q()
    manifest = json.loads(manifest_path(path).read_text())
    manifest["obs_dim"] = 4
    manifest_path(path).write_text(json.dumps(manifest))
    assert "obs_dim=4" in refusal(path)


def test_refuses_wrong_input_names(make_q):
    path, _ = make_q(obs_input="observation")
    assert "inputs ['act', 'obs']" in refusal(path)


def test_refuses_wrong_input_shapes(tmp_path):
    layers = random_mlp(np.random.default_rng(0), 5, (8,))
    path = tmp_path / "q.onnx"
    save_q_model(mlp_onnx(layers, 4, 1), path, PENDULUM, {"name": "tests"})  # obs of width 4, task has 3
    assert "expected [batch, 3]" in refusal(path)


def test_refuses_a_fixed_batch_axis(tmp_path):
    model = onnx.load_from_string(mlp_onnx(random_mlp(np.random.default_rng(0), 4, (8,)), 3, 1))
    for value_info in model.graph.input:
        value_info.type.tensor_type.shape.dim[0].ClearField("dim_param")
        value_info.type.tensor_type.shape.dim[0].dim_value = 24
    path = tmp_path / "q.onnx"
    save_q_model(model.SerializeToString(), path, PENDULUM, {"name": "tests"})
    assert "dynamic batch axis" in refusal(path)


def test_refuses_a_model_with_non_finite_output(tmp_path):
    layers = random_mlp(np.random.default_rng(0), 4, (8,))
    layers[-1][0][:] = np.inf
    layers[0][0][:] = np.nan
    path = tmp_path / "q.onnx"
    save_q_model(mlp_onnx(layers, 3, 1), path, PENDULUM, {"name": "tests"})
    assert "non-finite" in refusal(path)


def test_refuses_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "q.onnx"
    save_q_model(b"this is not a model", path, PENDULUM, {"name": "tests"})
    assert "does not load in ONNX Runtime" in refusal(path)


def test_refuses_a_model_with_one_output_per_two_rows(tmp_path):
    nodes = [
        helper.make_node("Concat", ["obs", "act"], ["x"], axis=1),
        helper.make_node("ReduceSum", ["x"], ["q"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [
            helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("act", onnx.TensorProto.FLOAT, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "q.onnx"
    save_q_model(model.SerializeToString(), path, PENDULUM, {"name": "tests"})
    assert "one value per row" in refusal(path)


@pytest.mark.parametrize(
    "field, value",
    [("inputs", ["obs", "act"]), ("inputs", {"obs": "obs"}), ("output", ["q"]), ("obs_dim", "3"), ("producer", None)],
)
def test_refuses_a_manifest_with_a_missing_or_mistyped_field(make_q, field, value):
    path, _ = make_q()
    manifest = json.loads(manifest_path(path).read_text())
    manifest[field] = value
    manifest_path(path).write_text(json.dumps(manifest))
    assert f"lacks or mistypes {field}" in refusal(path)


def _two_input_model(nodes, obs_type=onnx.TensorProto.FLOAT, extra_init=()) -> bytes:
    graph = helper.make_graph(
        nodes,
        "probe",
        [
            helper.make_tensor_value_info("obs", obs_type, ["batch", 3]),
            helper.make_tensor_value_info("act", onnx.TensorProto.FLOAT, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT, ["batch"])],
        list(extra_init),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_refuses_a_graph_that_mixes_rows_of_the_batch(tmp_path):
    # q = sum(x) - mean over the batch of sum(x): fine shapes, finite, but not a function of its own row
    nodes = [
        helper.make_node("Concat", ["obs", "act"], ["x"], axis=1),
        helper.make_node("ReduceSum", ["x", "axis1"], ["row"], keepdims=0),
        helper.make_node("ReduceMean", ["row"], ["batch_mean"], keepdims=1),
        helper.make_node("Sub", ["row", "batch_mean"], ["q"]),
    ]
    axis = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    path = tmp_path / "q.onnx"
    save_q_model(_two_input_model(nodes, extra_init=[axis]), path, PENDULUM, {"name": "tests"})
    assert "mixes rows" in refusal(path)


def test_refuses_float64_inputs(tmp_path):
    nodes = [
        helper.make_node("Cast", ["obs"], ["obs32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Concat", ["obs32", "act"], ["x"], axis=1),
        helper.make_node("ReduceSum", ["x", "axis1"], ["q"], keepdims=0),
    ]
    axis = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    path = tmp_path / "q.onnx"
    save_q_model(_two_input_model(nodes, onnx.TensorProto.DOUBLE, [axis]), path, PENDULUM, {"name": "tests"})
    assert "tensor(double)" in refusal(path)


def test_a_file_swapped_between_check_and_load_is_not_what_runs(make_q, monkeypatch):
    """The session is built from the very bytes whose sha256 was checked."""
    import hashlib

    from onboard import qfunction

    path, layers = make_q()
    other, _ = make_q(seed=1)

    class SwapWhileHashing:
        @staticmethod
        def sha256(data):
            path.write_bytes(other.read_bytes())  # a deploy replaces the file right after it was read
            return hashlib.sha256(data)

    monkeypatch.setattr(qfunction, "hashlib", SwapWhileHashing)
    q = OnnxQ(path, PENDULUM)
    obs, act = np.zeros((2, 3)), np.ones((2, 1))
    np.testing.assert_allclose(q(obs, act), mlp_forward(layers, obs, act), rtol=1e-5, atol=1e-5)
