"""The trainer's targets on Ray workers: a real Ray cluster on 127.0.0.1 that the test starts and stops, and
targets (and whole training rounds) equal to the single-process trainer's."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import numpy as np
import pytest

from offboard.mpq import Config, Trainer
from offboard.target_workers import require_ray
from tests.offboard.test_trainer import write_segment

pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")


def trainer(folder: Path, out: Path, **settings) -> Trainer:
    config = Config(
        data=(str(folder),), out=str(out), updates_per_iteration=4, batch_size=40, torch_threads=1, **settings
    )
    return Trainer(config, progress=False, log=lambda *_: None)


def test_targets_on_two_ray_workers_equal_the_single_process_trainers(cluster, tmp_path):
    folder = tmp_path / "robot"
    for episode in (1, 2, 3):
        write_segment(folder, episode)
    local = trainer(folder, tmp_path / "local")
    remote = trainer(folder, tmp_path / "remote", ray=cluster, target_workers=2)
    try:
        for t in (local, remote):
            t.load()
        states = local.buffer.next_state[:40]  # three chunks: split over the two workers as 2 + 1
        for t in (local, remote):
            t.targets.sync()
        expected = local.targets.values(states, (0, 0, 7))
        assert np.isfinite(expected).all() and np.ptp(expected) > 0
        np.testing.assert_allclose(remote.targets.values(states, (0, 0, 7)), expected, rtol=1e-6, atol=1e-6)
        assert not np.allclose(local.targets.values(states, (0, 0, 8)), expected)  # another minibatch: other noise

        # A whole round: the same minibatches, targets and steps; the Q's weights sent to the workers as they change.
        records = [t.train_iteration() for t in (local, remote)]
        for key in ("loss", "mean_target", "holdout_bellman_error"):
            assert records[1][key] == pytest.approx(records[0][key], rel=1e-5), key
        for name, weight in local.net.state_dict().items():
            np.testing.assert_allclose(remote.net.state_dict()[name].numpy(), weight.numpy(), rtol=1e-5, atol=1e-6)
    finally:
        local.close()
        remote.close()


def test_a_malformed_address_is_refused_in_a_process_already_connected_to_a_cluster(cluster):
    """Once connected, a process stays on its cluster; a garbage --ray was once taken as that cluster (a demo
    started in a process a test had connected ran its whole default run on it)."""
    from offboard.demo import DemoConfig, ray_problem
    from offboard.target_workers import connect

    assert connect(cluster).is_initialized()
    with pytest.raises(ValueError, match="--ray garbage:xx: give auto"):
        connect("garbage:xx")
    assert ray_problem(DemoConfig(ray="garbage:xx")).startswith("--ray garbage:xx: give auto")
    assert ray_problem(DemoConfig(ray=cluster)) is None


def test_without_ray_the_trainer_works_and_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    with pytest.raises(ValueError, match=r"^--ray needs Ray: pip install -e '\.\[cluster\]'"):
        require_ray()
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    from offboard.__main__ import main

    out = str(tmp_path / "runs")
    assert (
        main(["train", "--data", str(folder), "--out", out, "--iterations", "1", "--model", str(tmp_path / "q.onnx")])
        == 0
    )
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--out", out, "--ray", "auto"]) == 2
    assert (
        capsys.readouterr().err
        == "error: --ray needs Ray: pip install -e '.[cluster]' (the cluster extra), then try again\n"
    )
