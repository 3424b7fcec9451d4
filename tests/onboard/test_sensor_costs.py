"""A cost on a Cartesian point with no kinematics written: the task reads the MJCF's sensors (a <framepos> of the
fingertip's site) at every state the planner visits, through Task.sensordata, on every MuJoCo backend."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

import onboard.tasks
from firmware_bridge.plant import MujocoPlant, TaskModel
from onboard.backends import get_backend
from onboard.mppi import MPPI, MPPIConfig
from onboard.tasks import get_task
from onboard.tasks.base import Parameter, Task
from tests.gpu import needs_gpu, needs_warp

# A two-joint arm in the horizontal plane (dm_control's reacher, smaller): bring its fingertip to a target site.
REACHER_XML = """<mujoco model="reacher">
  <compiler angle="radian"/>
  <option timestep="0.01" gravity="0 0 0"/>
  <custom>
    <numeric name="control_period" data="0.02"/>
    <numeric name="episode_seconds" data="1.5"/>
    <numeric name="reset_low" data="-0.5 -0.5 0 0"/>
    <numeric name="reset_high" data="0.5 0.5 0 0"/>
  </custom>
  <worldbody>
    <site name="target" pos="0.15 0.25 0" size="0.01"/>
    <body name="upper">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.01"/>
      <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.01" mass="0.1"/>
      <body name="lower" pos="0.2 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" range="-2.8 2.8" damping="0.01"/>
        <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.01" mass="0.1"/>
        <site name="tip" pos="0.2 0 0" size="0.01"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder" ctrlrange="-0.05 0.05"/>
    <motor name="elbow" joint="elbow" ctrlrange="-0.05 0.05"/>
  </actuator>
  <sensor>
    <framepos name="tip" objtype="site" objname="tip"/>
    <framelinvel name="tip_velocity" objtype="site" objname="tip"/>
    <framepos name="target" objtype="site" objname="target"/>
    <actuatorfrc name="shoulder_torque" actuator="shoulder"/>
  </sensor>
</mujoco>
"""


class Reacher(Task):
    """Cost, observation and success on the fingertip's position and velocity, read from the MJCF's sensors."""

    name = "reacher"
    obs_dim = 4
    parameters = (Parameter("body_mass[lower]", 0.05, 0.2),)
    mppi_defaults = dict(K=64, H=10, sigma=0.001, temperature=0.05, alpha=0.5, gamma=0.95, n_iters=2)
    long_horizon = 20

    def __init__(self, mass_scale=None):
        super().__init__(mass_scale)
        self.tip, self.tip_velocity, self.target = (self.sensor(n) for n in ("tip", "tip_velocity", "target"))

    def offset(self, data):
        """The fingertip's position from the target's, in the arm's plane."""
        return (data[..., self.tip] - data[..., self.target])[..., :2]

    def cost(self, s, u):
        data = self.sensordata(s, u)
        return 100 * (self.offset(data) ** 2).sum(-1) + 0.1 * (data[..., self.tip_velocity] ** 2).sum(-1)

    def obs(self, s):
        data = self.sensordata(s)
        return np.concatenate([self.offset(data), data[..., self.tip_velocity][..., :2]], axis=-1)

    def success(self, s):
        return (self.offset(self.sensordata(s)) ** 2).sum(-1) < 0.02**2


TORQUE_SENSOR = """    <actuatorfrc name="shoulder_torque" actuator="shoulder"/>\n"""


def register_reacher(tmp_path, monkeypatch, xml: str = REACHER_XML):
    """Registered as a user would add it: its MJCF under models/reacher/, its class, one registry line."""
    (tmp_path / "models" / "reacher").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models" / "reacher" / "reacher.xml").write_text(xml)
    monkeypatch.setattr(Reacher, "models_dir", tmp_path / "models")
    monkeypatch.setitem(onboard.tasks.TASKS, "reacher", Reacher)
    return get_task("reacher")


def count_forward_passes(task, monkeypatch) -> list[int]:
    """The number of states of each forward pass sensordata makes for the task from here on (a list it appends to)."""
    passes, computed = [], type(task.mjcf)._forward_sensors
    monkeypatch.setattr(
        type(task.mjcf), "_forward_sensors", lambda self, s, u: passes.append(len(s)) or computed(self, s, u)
    )
    return passes


@pytest.fixture
def reacher(tmp_path, monkeypatch):
    return register_reacher(tmp_path, monkeypatch)


def forward_pass(task, state, action) -> np.ndarray:
    """mj_forward's sensordata at one state with one action: what sensordata must give, state by state."""
    model = task.mjcf.model
    data = mujoco.MjData(model)
    mujoco.mj_setState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    data.ctrl[:] = action
    mujoco.mj_forward(model, data)
    return data.sensordata.copy()


def test_sensordata_is_mujocos_forward_pass_at_each_state(reacher):
    rng = np.random.default_rng(0)
    states = np.stack([reacher.initial_state(rng) for _ in range(6)]).reshape(2, 3, -1)
    states[..., reacher.qvel] = rng.uniform(-3, 3, (2, 3, 2))
    actions = rng.uniform(reacher.u_min, reacher.u_max, (2, 3, 2))
    data = reacher.sensordata(states, actions)
    assert data.shape == (2, 3, reacher.mjcf.model.nsensordata)
    for i in np.ndindex(2, 3):
        np.testing.assert_allclose(data[i], forward_pass(reacher, states[i], actions[i]), atol=1e-12)
    # the fingertip moved with the joints (not the rest pose's), and the acceleration stage saw the actions
    assert np.ptp(data[..., reacher.tip][..., 0]) > 0.01
    np.testing.assert_allclose(data[..., reacher.sensor("shoulder_torque")][..., 0], actions[..., 0], atol=1e-12)
    np.testing.assert_allclose(reacher.sensordata(states)[..., reacher.sensor("shoulder_torque")], 0.0)
    assert reacher.sensordata(states.astype(np.float32)).dtype == np.float32  # the backend's float type


@pytest.mark.parametrize("seed", [0, 1])
def test_a_cost_on_the_fingertips_sensor_plans_the_arm_onto_its_target(reacher, seed):
    plant = MujocoPlant.for_task("reacher", reacher.models_dir)
    state = plant.reset(reacher.hanging_state())  # the rest pose: the arm straight along x, 0.35 m from the target
    assert np.linalg.norm(reacher.obs(state)[:2]) > 0.3
    mppi = MPPI(reacher, MPPIConfig.for_task(reacher, seed=seed), "mujoco", threads=2)
    for _ in range(60):
        state = plant.step(mppi.act(state))
    assert reacher.success(state), reacher.obs(state)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_warp), pytest.param("cuda:0", marks=needs_gpu)])
def test_the_warp_backend_costs_sensor_tasks_as_the_mujoco_backend(reacher, monkeypatch, device):
    """On the GPU the states go to the host for the sensors and back: the costs are the same within float32."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", device)
    rng = np.random.default_rng(2)
    states = np.stack([reacher.initial_state(rng) for _ in range(2)])
    actions = rng.uniform(reacher.u_min, reacher.u_max, (2, 8, 6, 2))
    params = reacher.planner_params("biased", (2, 8), rng)
    backend = get_backend("warp", reacher)
    if device == "cpu":
        cost, last = backend.rollout(states, actions, params, 0.9)
    else:
        import cupy

        with backend.scope():
            on_gpu = backend.rollout(cupy.asarray(states), cupy.asarray(actions), cupy.asarray(params), 0.9)
        cost, last = (cupy.asnumpy(a) for a in on_gpu)
    ref_cost, ref_last = get_backend("mujoco", reacher, threads=2).rollout(states, actions, params, 0.9)
    np.testing.assert_allclose(last, ref_last, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-4, atol=2e-4)
    assert np.ptp(cost) > 0.1  # the sequences' costs differ: the sensors followed each rollout


@pytest.mark.parametrize("backend", ["mujoco", pytest.param("warp", marks=needs_warp)])
@pytest.mark.parametrize("frames_only", [True, False])
def test_the_mjcf_backends_hand_over_the_sensors_they_computed_while_stepping(
    tmp_path, monkeypatch, backend, frames_only
):
    """The running cost and the terminal value read the sensors the backend computed on its way (no second forward
    pass over the path), and they are the values a forward pass gives at each state. A model with a sensor that a
    draw changes (here a torque, of the acceleration stage) gets every sensor from the MJCF's model instead."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", "cpu")
    reacher = register_reacher(
        tmp_path, monkeypatch, REACHER_XML.replace(TORQUE_SENSOR, "") if frames_only else REACHER_XML
    )
    assert reacher.mjcf.frame_sensors_only == frames_only
    rng = np.random.default_rng(3)
    states = np.stack([reacher.initial_state(rng) for _ in range(2)])
    actions = rng.uniform(reacher.u_min, reacher.u_max, (2, 8, 6, 2))
    params = reacher.planner_params("biased", (2, 8), rng)
    forward_passes = count_forward_passes(reacher, monkeypatch)
    cost, last = get_backend(backend, reacher, **(dict(threads=2) if backend == "mujoco" else {})).rollout(
        states, actions, params, 0.9
    )
    terminal_obs = reacher.obs(last)  # as MPPI reads the last states for its Q
    if frames_only:  # mujoco's last states: one forward pass each (no step of the rollout started there); warp: none
        assert forward_passes == ([16] if backend == "mujoco" else [])
    else:  # the path's 5 states and the last, of each of the 16 rollouts
        assert forward_passes == [80, 16]
    reacher.forget_sensordata()  # the same with every sensor computed afresh
    np.testing.assert_allclose(reacher.obs(last), terminal_obs, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(reacher, "reads_sensors", False)  # so that the backend hands over none
    fresh_cost, _ = get_backend(backend, reacher, **(dict(threads=2) if backend == "mujoco" else {})).rollout(
        states, actions, params, 0.9
    )
    np.testing.assert_allclose(cost, fresh_cost, rtol=1e-5, atol=1e-6)
    assert len(forward_passes) > 1


@needs_warp
def test_mpq_lambda_on_warp_reads_the_sensors_warp_computed_along_the_rollout(tmp_path, monkeypatch):
    """MPQ(lambda)'s Q runs on every state of the rollout: on warp all their sensors come from the stepping, so a
    plan on a GPU need not go to the host for them. The plan is the one computed afresh."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", "cpu")
    reacher = register_reacher(tmp_path, monkeypatch, REACHER_XML.replace(TORQUE_SENSOR, ""))
    q = lambda obs, act: (obs**2).sum(-1) + (act**2).sum(-1)  # noqa: E731 (a Q that reads every observation)
    config = MPPIConfig.for_task(reacher, K=8, H=4, n_iters=1, td_lambda=0.5, seed=0)
    forward_passes = count_forward_passes(reacher, monkeypatch)
    handed_over = MPPI(reacher, config, "warp", q=q).plan(reacher.hanging_state()[None])
    assert forward_passes == []
    monkeypatch.setitem(vars(reacher.mjcf), "frame_sensors_only", False)  # every sensor computed afresh
    afresh = MPPI(reacher, config, "warp", q=q).plan(reacher.hanging_state()[None])
    assert forward_passes  # Warp's sensors are float32's, the fresh ones float64's: the same plan within float32
    np.testing.assert_allclose(handed_over.actions, afresh.actions, atol=1e-6)


@pytest.mark.parametrize("backend", ["mujoco", pytest.param("warp", marks=needs_warp)])
def test_a_rollout_from_a_diverged_state_is_not_costed_on_sensors_that_look_sound(tmp_path, monkeypatch, backend):
    """The sensors a backend hands over for a diverged state are NaN, as sensordata gives: MuJoCo resets such a state
    to the rest pose, whose sensors would make the rollout look good."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", "cpu")
    reacher = register_reacher(tmp_path, monkeypatch, REACHER_XML.replace(TORQUE_SENSOR, ""))
    states = np.stack([reacher.hanging_state()] * 2)
    states[1, reacher.qvel] = 1e11
    actions = np.zeros((2, 4, 2, 2))  # H=2: the running cost is the start's alone
    cost, _ = get_backend(backend, reacher).rollout(states, actions, reacher.planner_params("mean", (), None), 0.9)
    assert np.isfinite(cost[0]).all() and not np.isfinite(cost[1]).any()


@pytest.mark.parametrize(
    "sensor", ['<e_kinetic name="energy"/>', '<subtreecom name="com" body="upper"/>', '<actuatorpos actuator="elbow"/>']
)
def test_a_sensor_that_a_draw_changes_is_computed_on_the_mjcfs_model_not_handed_over(tmp_path, sensor):
    """An energy or a centre of mass follows the masses, an actuator's position its gear: fields a task biases."""
    (tmp_path / "reacher.xml").write_text(REACHER_XML.replace(TORQUE_SENSOR, f"    {sensor}\n"))
    assert not TaskModel(tmp_path / "reacher.xml").frame_sensors_only
    (tmp_path / "reacher.xml").write_text(REACHER_XML.replace(TORQUE_SENSOR, ""))
    assert TaskModel(tmp_path / "reacher.xml").frame_sensors_only


def test_a_sensor_the_mjcf_lacks_is_one_error_when_the_task_loads(reacher, monkeypatch):
    class Blind(Reacher):
        def __init__(self, mass_scale=None):
            super().__init__(mass_scale)
            self.camera = self.sensor("elbow_camera")

    monkeypatch.setitem(onboard.tasks.TASKS, "reacher", Blind)
    with pytest.raises(ValueError) as error:
        get_task("reacher")
    assert str(error.value) == (
        f"{reacher.xml_path} has no sensor 'elbow_camera': its sensors are 'tip', 'tip_velocity', 'target', "
        "'shoulder_torque'"
    )


@pytest.mark.parametrize(
    "moved, derived",
    [
        ("body_pos[lower][0]", ()),  # a drawn link length would be planned with the true fingertip
        ("body_ipos[lower][0]", ()),  # a body's <framepos> is its centre of mass
        ("body_mass[lower]", ("geom_size",)),  # a field a draw derives (Task.derive) moves frames too
    ],
)
def test_a_task_reading_sensors_may_not_bias_where_its_frames_are(reacher, monkeypatch, moved, derived):
    """The sensors follow the MJCF's model, not a draw."""

    class Moved(Reacher):
        parameters = (Parameter(moved, 0.05, 0.15),)
        derived_fields = derived

    monkeypatch.setitem(onboard.tasks.TASKS, "reacher", Moved)
    with pytest.raises(ValueError) as error:
        get_task("reacher")
    assert str(error.value) == (
        "task reacher: its cost, obs or success reads sensordata, computed on the MJCF's model, and its bias moves "
        f"{derived[0] if derived else moved}, which those sensors would not follow: bias fields that move no frame "
        "(masses, inertias, damping, stiffness)"
    )
    monkeypatch.setitem(onboard.tasks.TASKS, "reacher", Reacher)  # a mass bias, which moves no frame, loads
    assert get_task("reacher").param_names == ("body_mass[lower]",)


def test_a_diverged_state_has_nan_sensors_not_the_rest_poses_and_no_states_no_rows(reacher):
    """MuJoCo resets a state it finds diverged: costed at the rest pose, a blown-up rollout would look good."""
    states = np.repeat(reacher.hanging_state()[None], 4, axis=0)
    states[:, reacher.qpos] = 0.7
    states[1, reacher.qvel] = np.nan
    states[2, reacher.qvel] = 1e11
    data = reacher.sensordata(states)
    assert np.isnan(data[1:3]).all() and np.isfinite(data[[0, 3]]).all()
    np.testing.assert_allclose(data[0], forward_pass(reacher, states[0], np.zeros(2)), atol=1e-12)
    assert not np.isfinite(reacher.cost(states, np.zeros((4, 2)))[1:3]).any()  # MPPI gives such samples no weight
    for shape in [(0,), (0, 3), (3, 0)]:
        empty = np.empty((*shape, reacher.state_dim))
        assert reacher.sensordata(empty).shape == (*shape, reacher.mjcf.model.nsensordata)
