"""A task given by its MJCF and a cost alone (no closed-form model) goes the whole way: it plans with the
mujoco backend, drives the stand-in over the serial link, records verified segments, trains a Q with
MuJoCo targets, exports it and plans with it. Its observation reads the MJCF's sensors (Task.sensordata)."""

from __future__ import annotations

import numpy as np
import pytest

import onboard.tasks
from offboard.export import export
from offboard.mpq import Config, train
from onboard.loop import make_planner, run
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import load_profile
from onboard.qfunction import OnnxQ
from onboard.recorder import read_segment, verified_segments
from onboard.tasks.base import Parameter, Task

# A puck sliding on a floor (a real contact: MuJoCo takes the larger friction of the two geoms, the floor's),
# pushed along x by a motor: bring it to x = 0.5 from a start at least 0.5 m short of it.
PUCK_XML = """<mujoco model="puck">
  <option timestep="0.01"/>
  <custom>
    <numeric name="control_period" data="0.05"/>
    <numeric name="episode_seconds" data="1.5"/>
    <numeric name="reset_low" data="-0.5 0 0 0"/>
    <numeric name="reset_high" data="0 0 0 0"/>
  </custom>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 0.1" friction="0.1 0.005 0.0001"/>
    <body name="puck" pos="0 0 0.05">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="z" type="slide" axis="0 0 1"/>
      <geom name="puck" type="box" size="0.05 0.05 0.05" mass="1" friction="0.01 0.005 0.0001"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="push" joint="x" ctrllimited="true" ctrlrange="-10 10"/>
  </actuator>
  <sensor>
    <framepos name="puck" objtype="body" objname="puck"/>
    <framelinvel name="puck_velocity" objtype="body" objname="puck"/>
  </sensor>
</mujoco>
"""


class Puck(Task):
    """Only what an MJCF cannot say: the cost, the observation, success, MPPI settings and the bias."""

    name = "puck"
    obs_dim = 2
    parameters = (Parameter("body_mass[puck]", 0.5, 2.0), Parameter("geom_friction[floor][0]", 0.05, 0.3))
    mppi_defaults = dict(K=32, H=10, sigma=25.0, temperature=0.1, alpha=0.5, gamma=0.9, n_iters=2)
    long_horizon = 12

    def cost(self, s, u):
        return (s[..., 1] - 0.5) ** 2 + 0.1 * s[..., 3] ** 2  # state: time, x, z, xdot, zdot

    def obs(self, s):  # from the MJCF's sensors (Task.sensordata): what the Q sees on the robot and in training
        data = self.sensordata(s)
        return np.stack([data[..., self.sensor("puck")][..., 0], data[..., self.sensor("puck_velocity")][..., 0]], -1)

    def success(self, s):
        return abs(s[..., 1] - 0.5) < 0.05


@pytest.fixture
def puck(tmp_path, monkeypatch):
    """The task registered as a user would (its MJCF, its module, one registry line), in a models folder here."""
    models = tmp_path / "models"
    (models / "puck").mkdir(parents=True)
    (models / "puck" / "puck.xml").write_text(PUCK_XML)
    monkeypatch.setattr(Puck, "models_dir", models)
    monkeypatch.setitem(onboard.tasks.TASKS, "puck", Puck)
    return Puck()


def test_an_mjcf_only_task_plans_runs_over_the_link_records_and_trains(puck, tmp_path):
    assert not puck.has_analytic_model and puck.state_dim == 5 and puck.episode_steps == 30
    np.testing.assert_allclose(puck.true_params, [1.0, 0.1])  # read from the MJCF, not restated
    # it plans: pushing towards x = 0.5 from x = 0
    mppi = MPPI(puck, MPPIConfig.for_task(puck, K=64, seed=0), "mujoco", threads=2)
    assert mppi.act(puck.hanging_state())[0] > 0

    # it runs against the stand-in (the same MJCF, stepped as the plant) over the link, and records
    profile = load_profile("sim", task="puck", backend="mujoco", log_dir=str(tmp_path / "data"))
    stats = run(profile, episodes=2, show_status=False)
    assert stats.episodes == 2 and stats.steps == 2 * puck.episode_steps
    segments, problems = verified_segments(tmp_path / "data" / "sim")
    assert problems == [] and len(segments) == 2
    metadata, topics = read_segment(segments[0])
    assert metadata["segment"]["task"] == "puck"
    steps = topics["/transition"]
    assert len(steps[0]["state"]) == 5 and steps[0]["state"][0] == 0.0  # the full physics state, from time 0
    assert steps[-1]["state"][0] == pytest.approx(0.05 * (puck.episode_steps - 1), abs=1e-4)  # the plant's time
    for segment in segments:  # each episode pushed the puck towards x = 0.5
        transitions = read_segment(segment)[1]["/transition"]
        start, end = (abs(transitions[i][key][1] - 0.5) for i, key in ((0, "state"), (-1, "next_state")))
        assert end < 0.6 * start, (start, end)

    # it trains with MuJoCo targets (no closed-form model anywhere), exports, and plans with its Q
    config = Config(
        task="puck",
        data=(str(tmp_path / "data" / "sim"),),
        out=str(tmp_path / "runs"),
        iterations=1,
        updates_per_iteration=10,
        batch_size=16,
        torch_threads=1,
    )
    assert config.backend == "mujoco"
    result = train(config, progress=False, log=lambda *_: None)
    assert len(result.buffer) == 2 * puck.episode_steps and result.problems == []
    assert np.isfinite(result.history[-1]["holdout_bellman_error"])
    path = tmp_path / "q.onnx"
    export(result.net, "puck", path, extra=dict(config=config.to_dict()))
    q = OnnxQ(path, puck)
    planner = make_planner(load_profile("sim", task="puck", backend="mujoco", model=str(path)), puck)
    assert planner.q is not None and np.all(np.isfinite(planner.act(puck.hanging_state())))
    assert np.isfinite(q(puck.obs(puck.hanging_state())[None], np.zeros((1, 1)))).all()
    states = np.array([t["state"] for t in steps])  # the sensors' observation is the puck's x and its speed
    np.testing.assert_allclose(puck.obs(states), states[:, [1, 3]], atol=1e-12)
