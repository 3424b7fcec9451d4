"""MPQ training from recorded robot logs, the verified export, and bad data kept out of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offboard.dataset import DatasetError, load_replay_buffer
from offboard.export import ExportError, export, load_checkpoint
from offboard.mpq import Config, QNetwork, train
from onboard.loop import run
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import load_profile
from onboard.qfunction import OnnxQ, read_manifest
from onboard.recorder import Recorder
from onboard.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
PENDULUM = get_task("pendulum")


@pytest.fixture(scope="module")
def robot_logs(tmp_path_factory):
    """Four pendulum episodes from the onboard loop against the stand-in (plain MPPI, biased model)."""
    logs = tmp_path_factory.mktemp("data")
    run(load_profile("sim", log_dir=str(logs)), episodes=4, show_status=False)
    return logs / "sim"


def quiet(*_):
    pass


def test_training_lowers_the_held_out_bellman_error_and_the_export_plans_onboard(robot_logs, tmp_path):
    config = Config(data=(str(robot_logs),), out=str(tmp_path / "runs"), iterations=2, updates_per_iteration=60)
    result = train(config, progress=False, log=quiet)
    errors = [result.history[0]["holdout_bellman_error_before"], *(h["holdout_bellman_error"] for h in result.history)]
    assert len(result.buffer) == 4 * PENDULUM.episode_steps
    assert errors[-1] < 0.8 * errors[0], errors
    assert sorted(p.name for p in result.run_dir.glob("checkpoint-*.pt")) == ["checkpoint-001.pt", "checkpoint-002.pt"]
    assert json.loads((result.run_dir / "config.json").read_text())["horizon"] == 8
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))

    model = tmp_path / "models" / "q.onnx"
    extra = dict(segments=result.buffer.segments, training=config.to_dict(), mppi={"H": 8})
    export(result.net, "pendulum", model, extra)
    manifest = read_manifest(model)
    assert [s["sha256"] for s in manifest["segments"]] == [s["sha256"] for s in result.buffer.segments]
    assert manifest["training"]["iterations"] == 2 and manifest["producer"]["max_relative_error"] <= 1e-5
    q = OnnxQ(model, PENDULUM)
    mppi = MPPI(PENDULUM, MPPIConfig.for_task(PENDULUM), "c", q=q)
    u = mppi.act(PENDULUM.hanging_state())
    assert np.isfinite(u).all() and np.isfinite(mppi.last_plan.value[0])


@pytest.mark.parametrize("sync_every, synced_last", [(10, True), (15, False)])
def test_soft_q_baseline_is_the_same_code_with_h1_and_a_target_network(robot_logs, tmp_path, sync_every, synced_last):
    config = Config(
        data=(str(robot_logs),),
        out=str(tmp_path),
        iterations=1,
        updates_per_iteration=20,
        horizon=1,
        target_network=True,
        target_sync_every=sync_every,
    )
    result = train(config, progress=False, log=quiet)
    assert np.isfinite(result.history[-1]["loss"]) and result.trained_config["horizon"] == 1
    saved = torch.load(result.run_dir / "checkpoint-001.pt", weights_only=False)
    net, target = saved["state_dict"], saved["target_state_dict"]
    # copied every sync_every updates: after 20, the target is the net itself (synced at 20) or lags it (at 15)
    assert all(torch.equal(net[k], target[k]) for k in net) == synced_last


def write_segment(folder: Path, episode: int, task: str, cost: float, state_dim: int = 3) -> None:
    recorder = Recorder(folder.parent, folder.name)
    recorder.start_episode(episode, dict(task=task, robot=folder.name))
    state = [0.1] * state_dim
    obs = [1.0, 0.0, 0.0] if task == "pendulum" else [0.0, 1.0, 0.0, 0.0, 0.0]
    for t in range(3):
        recorder.write(
            "/transition", dict(t=t, state=state, obs=obs, action=[0.5], cost=cost, next_state=state, done=t == 2)
        )
    recorder.end_episode()
    recorder.close()


def test_bad_segments_are_reported_and_never_trained_on(robot_logs, tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1, "pendulum", cost=1.0)
    write_segment(folder, 2, "pendulum", cost=float("nan"))
    write_segment(folder, 3, "cartpole", cost=1.0, state_dim=5)
    write_segment(folder, 4, "pendulum", cost=2.0)
    tampered = folder / "000004.mcap"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))

    buffer, problems = load_replay_buffer([folder], PENDULUM)
    assert len(buffer) == 3 and [s["segment"] for s in buffer.segments] == [str(folder / "000001.mcap")]
    assert np.all(buffer.cost == 1.0)
    assert any("000002.mcap" in p and "non-finite" in p for p in problems)
    assert any("000003.mcap" in p and "task 'cartpole'" in p for p in problems)
    assert any("000004.mcap" in p and "sha256" in p for p in problems)


def test_no_usable_data_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from offboard.__main__ import main  # `python -m offboard`, in this process (torch is loaded here already)

    with pytest.raises(DatasetError, match="no usable pendulum segments"):
        load_replay_buffer([tmp_path / "empty"], PENDULUM)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(ROOT)
    for out_dir in (tmp_path, tmp_path / "runs"):  # an --out that exists, and one made for this run
        assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(out_dir)]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: no usable pendulum segments") and err.count("\n") == 1, err
        assert "left out" not in out  # the error names the folder's problem: not said twice
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no run folder, nor an --out made for one


def test_an_unlisted_segment_alone_is_named_as_such_not_as_an_empty_folder(robot_logs, tmp_path):
    folder = tmp_path / "copied"
    folder.mkdir()
    (folder / "000001.mcap").write_bytes((robot_logs / "000001.mcap").read_bytes())  # copied without its MANIFEST
    with pytest.raises(DatasetError) as error:
        load_replay_buffer([folder], PENDULUM)
    assert str(error.value) == (
        f"no usable pendulum segments in {folder}: {folder / '000001.mcap'}: not in MANIFEST (not closed by the "
        "recorder)"
    )


def test_an_empty_folder_among_others_is_named_not_dropped_in_silence(robot_logs, tmp_path):
    (tmp_path / "empty").mkdir()
    buffer, problems = load_replay_buffer([robot_logs, tmp_path / "empty"], PENDULUM)
    assert len(buffer) > 0 and problems == [
        f"{tmp_path / 'empty'}: no segments in it (record some with `make sim`, or leave it out of --data)"
    ]


def test_segments_of_another_task_alone_are_refused(robot_logs):
    with pytest.raises(DatasetError, match="recorded for task 'pendulum', not 'cartpole'"):
        load_replay_buffer([robot_logs], get_task("cartpole"))


def cancelling_q(output_scale: float) -> QNetwork:
    """A Q like a trained cart-pole one: output terms of +-output_scale/10 that mostly cancel, so torch
    float32 itself sits further than 1e-5 from the exact network."""
    torch.manual_seed(0)
    net = QNetwork(5, 1)
    with torch.no_grad():
        net.net[-1].weight.mul_(output_scale)
    return net


def test_an_export_that_differs_from_torch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """Even where float32 rounding loosens the tolerance, a 1% change in one weight is caught."""
    import copy

    import offboard.export as export_module

    net = cancelling_q(1000.0)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.net[0].weight[0, 0] *= 1.01
    real_onnx_bytes = export_module.onnx_bytes
    monkeypatch.setattr(export_module, "onnx_bytes", lambda _net, *dims: real_onnx_bytes(other, *dims))
    with pytest.raises(ExportError, match="ONNX Runtime differs from torch"):
        export(net, "cartpole", tmp_path / "models" / "q.onnx", {})
    assert not list(tmp_path.rglob("q.*"))


def test_a_q_with_large_cancelling_weights_exports_within_float32_rounding(tmp_path):
    producer = read_manifest(export(cancelling_q(1000.0), "cartpole", tmp_path / "q.onnx", {}).with_suffix(".onnx"))[
        "producer"
    ]
    assert producer["float32_rounding"] > 1e-5  # a fixed 1e-5 could not be met by any float32 runner
    assert producer["max_relative_error"] <= producer["allowed_error"] <= 1e-3


def test_a_q_too_large_for_float32_is_refused_not_exported(tmp_path):
    with pytest.raises(ExportError, match="float32 rounding .* retrain"):
        export(cancelling_q(1e6), "cartpole", tmp_path / "q.onnx", {})
    assert not list(tmp_path.rglob("q.*"))


def test_the_value_scale_is_part_of_the_q_saved_and_exported(tmp_path):
    """The cart-pole's values run to hundreds: its Q's output is 100 x its network's, in torch, in the checkpoint
    and in the ONNX graph the robot runs; a checkpoint from before the scale existed loads unscaled."""
    cartpole = get_task("cartpole")
    assert cartpole.value_scale == 100.0 and PENDULUM.value_scale == 1.0
    torch.manual_seed(0)
    scaled = QNetwork(cartpole.obs_dim, 1, value_scale=cartpole.value_scale)
    plain = QNetwork(cartpole.obs_dim, 1)
    plain.net.load_state_dict(scaled.net.state_dict())
    obs, act = torch.randn(50, cartpole.obs_dim), torch.randn(50, 1)
    torch.testing.assert_close(scaled(obs, act), 100.0 * plain(obs, act))

    path = tmp_path / "q.onnx"
    export(scaled, "cartpole", path, dict(training=Config(task="cartpole").to_dict()))
    q = OnnxQ(path, cartpole)
    np.testing.assert_allclose(q(obs.numpy(), act.numpy()), scaled(obs, act).detach().numpy(), rtol=1e-4, atol=1e-3)

    config = Config(task="cartpole").to_dict()
    old = {k: v for k, v in plain.state_dict().items() if k != "value_scale"}
    torch.save(dict(state_dict=old, config=config, iteration=1, segments=[]), tmp_path / "old.pt")
    net, _ = load_checkpoint(tmp_path / "old.pt")
    torch.testing.assert_close(net(obs, act), plain(obs, act))
    torch.save(dict(state_dict=scaled.state_dict(), config=config, iteration=1, segments=[]), tmp_path / "new.pt")
    net, _ = load_checkpoint(tmp_path / "new.pt")
    torch.testing.assert_close(net(obs, act), scaled(obs, act))
