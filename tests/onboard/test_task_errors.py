"""A user's own task (its MJCF, its module, one registry line): each mistake one is likely to make is one error
when the task loads, naming the problem and the fix, not a plant that refuses some episodes, a traceback, or
segments the trainer leaves out later."""

from __future__ import annotations

import re

import numpy as np
import pytest

import onboard.tasks
from offboard.dataset import SegmentStore
from onboard.loop import run
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import ProfileError, load_profile
from onboard.tasks import get_task
from onboard.tasks.base import Parameter, Task

# A planar two-link arm: hinge ranges in radians only because the compiler says so.
ARM_XML = """<mujoco model="arm">
  <compiler angle="radian"/>
  <option timestep="0.01"/>
  <custom>
    <numeric name="control_period" data="0.05"/>
    <numeric name="episode_seconds" data="0.5"/>
    <numeric name="reset_low" data="-1 -1 0 0"/>
    <numeric name="reset_high" data="1 1 0 0"/>
  </custom>
  <worldbody>
    <body name="link1">
      <joint name="shoulder" type="hinge" axis="0 1 0" limited="true" range="-2.8 2.8" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.01" mass="0.5"/>
      <body name="link2" pos="0.1 0 0">
        <joint name="elbow" type="hinge" axis="0 1 0" limited="true" range="-2.8 2.8" damping="0.1"/>
        <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.01" mass="0.5"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="shoulder" ctrllimited="true" ctrlrange="-1 1"/>
    <motor joint="elbow" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""


class Arm(Task):
    name = "arm"
    obs_dim = 4
    parameters = (Parameter("body_mass[link2]", 0.4, 0.6),)
    mppi_defaults = dict(K=16, H=4, sigma=0.5, temperature=0.1, alpha=0.5, gamma=0.9, n_iters=1)
    long_horizon = 8

    def cost(self, s, u):
        return s[..., 1] ** 2 + s[..., 2] ** 2 + 0.01 * (u**2).sum(-1)

    def obs(self, s):
        return s[..., 1:5]

    def success(self, s):
        return abs(s[..., 1]) < 0.1


@pytest.fixture
def arm(tmp_path, monkeypatch):
    """make(xml=..., registered=..., **class attributes): a task class like Arm (an attribute given as None: left
    out), its MJCF in a models folder here, registered under `registered`; returns a maker of the task."""
    models = tmp_path / "models"
    (models / "arm").mkdir(parents=True)

    def make(xml: str = ARM_XML, registered: str = "arm", **attributes):
        (models / "arm" / "arm.xml").write_text(xml)
        body = {k: v for k, v in vars(Arm).items() if not k.startswith("__")} | attributes | {"models_dir": models}
        task = type("UserArm", (Task,), {k: v for k, v in body.items() if v is not None})
        monkeypatch.setitem(onboard.tasks.TASKS, registered, task)
        return lambda: get_task(registered)

    return make


def test_the_arm_as_written_loads_and_plans(arm):
    task = arm()()
    assert task.act_dim == 2 and task.state_dim == 5
    action = MPPI(task, MPPIConfig.for_task(task, seed=0), "mujoco", threads=1).act(
        task.initial_state(np.random.default_rng(1))
    )
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)


def test_a_limited_ball_joint_loads_and_its_starts_are_taken(arm):
    """A ball joint's range is a cone angle, not a qpos value: neither the load nor the plant's reset reads it as
    one (the plant refused the identity quaternion of a ball limited to 0.5 rad)."""
    ball = ARM_XML.replace(
        'type="hinge" axis="0 1 0" limited="true" range="-2.8 2.8" damping="0.1"/>\n      <geom',
        'type="ball" limited="true" range="0 0.5" damping="0.1"/>\n      <geom',
    )
    ball = ball.replace('low" data="-1 -1 0 0"', 'low" data="1 0 0 0 -1 0 0 0 0"')
    ball = ball.replace('high" data="1 1 0 0"', 'high" data="1 0 0 0 1 0 0 0 0"')
    ball = ball.replace('<motor joint="shoulder" ctrllimited="true" ctrlrange="-1 1"/>', "")
    task = arm(xml=ball, obs_dim=4)()
    assert task.mjcf.invalid_state(task.initial_state(np.random.default_rng(0))) is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda xml: xml.replace('<compiler angle="radian"/>', ""),  # MuJoCo's default: degrees
            "reset_low gives joint 'shoulder' -1, outside its range [-0.04887, 0.04887]: narrow "
            "reset_low/reset_high (a hinge's range is in degrees unless <compiler angle='radian'/>)",
        ),
        (
            lambda xml: xml.replace('low" data="-1 -1', 'low" data="1 -1').replace(
                'high" data="1 1', 'high" data="-1 1'
            ),
            "reset_low is above reset_high at value 0 (1 > -1): give the lower bound first",
        ),
        (
            lambda xml: xml.replace('high" data="1 1 0 0"', 'high" data="1 1 0 2000"'),
            "reset_high gives a start the plant refuses (values beyond 1e3): narrow it",
        ),
        (
            lambda xml: re.sub(r"<actuator>.*</actuator>", "", xml, flags=re.S),
            "no <actuator>: the planner commands the plant through its actuators",
        ),
        (
            lambda xml: xml.replace("</body>\n    </body>", "</body>\n    </bdy>"),
            "Line number=",  # MuJoCo's own location of the mismatched tag, kept
        ),
        (
            lambda xml: xml.replace('<numeric name="episode_seconds" data="0.5"/>', ""),
            "missing <custom><numeric name='episode_seconds' .../>",
        ),
    ],
    ids=["degrees", "low-above-high", "too-fast", "no-actuator", "mismatched-tag", "no-episode-seconds"],
)
def test_a_mistake_in_the_mjcf_is_one_error_naming_it_when_the_task_loads(arm, tmp_path, edit, message):
    with pytest.raises(ValueError) as refused:
        arm(xml=edit(ARM_XML))()
    assert str(refused.value).startswith(str(tmp_path / "models" / "arm" / "arm.xml"))
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "attributes, message",
    [
        (
            dict(obs_dim=5),
            "task arm: obs(s) on states (2, 5) and actions (2, 2) gives shape (2, 4), not (2, 5) (obs_dim)",
        ),
        (
            dict(cost=lambda self, s, u: s[..., 1:3] ** 2),
            "task arm: cost(s, u) on states (2, 5) and actions (2, 2) gives shape (2, 2), not (2,)",
        ),
        (dict(long_horizon=None), "task arm: its class gives no long_horizon (see onboard/tasks/base.py)"),
        (dict(success=None), "task arm: its class gives no success (see onboard/tasks/base.py)"),
        (
            dict(cost=lambda self, s, u: s[..., 9]),
            "task arm: cost(s, u) on states (2, 5) and actions (2, 2) raised IndexError: index 9 is out of bounds",
        ),
        (
            dict(registered="reacher"),
            "TASKS['reacher'] is UserArm, whose name is 'arm': give the class name = 'reacher'",
        ),
    ],
    ids=["obs-dim", "cost-shape", "no-long-horizon", "no-success", "cost-raises", "name-is-not-its-key"],
)
def test_a_mistake_in_the_task_module_is_one_error_naming_it_when_the_task_loads(arm, attributes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        arm(**attributes)()


def test_a_typo_in_the_tasks_mppi_settings_is_named_as_the_tasks(arm):
    task = arm(mppi_defaults=dict(Arm.mppi_defaults, Horizon=10))()
    with pytest.raises(
        ValueError, match=r"task arm's mppi_defaults: unknown MPPI setting\(s\) Horizon: the settings are"
    ):
        MPPIConfig.for_task(task)


def test_a_run_blames_the_task_not_the_profile_for_the_tasks_mistakes(arm, tmp_path):
    """The profile names the robot; a start box outside a joint's range is the MJCF's problem, and is said so (it
    was reported as the profile's [standin] mass_scale, which the profile does not set)."""
    arm(xml=ARM_XML.replace('<compiler angle="radian"/>', ""))
    with pytest.raises(ValueError) as refused:
        load_profile("sim", task="arm", log_dir=str(tmp_path))
    assert not isinstance(refused.value, ProfileError) and "[standin]" not in str(refused.value)
    assert "arm.xml: reset_low gives joint 'shoulder' -1, outside its range" in str(refused.value)
    arm()  # the MJCF mended: a body the profile scales that the MJCF lacks is the profile's problem
    with pytest.raises(
        ProfileError, match=r"\[standin\] mass_scale: mass scale: .*has no body 'pole': its bodies are link1, link2"
    ):
        load_profile("sim", task="arm", log_dir=str(tmp_path), standin=dict(mass_scale={"pole": 1.3}))


@pytest.mark.parametrize("command", ["robot-status", "pull-data", "deploy"])
def test_the_robot_commands_name_the_tasks_mistake_in_one_line(arm, tmp_path, capsys, command):
    from offboard.__main__ import main

    arm(mppi_defaults=dict(Arm.mppi_defaults, Horizon=10))
    profile = tmp_path / "arm.toml"
    profile.write_text('task = "arm"\n[deploy]\nhost = "127.0.0.1"\n')
    assert main([command, "--robot", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: task arm's mppi_defaults: unknown MPPI setting(s) Horizon" in err


def test_segments_recorded_before_the_task_changed_are_left_out_naming_the_sizes(arm, tmp_path):
    arm()
    run(load_profile("sim", task="arm", log_dir=str(tmp_path), backend="mujoco", threads=1), 1, show_status=False)
    three_links = get_task("arm")
    three_links.obs_dim = 3  # the module changed after recording: its obs() gives 3 values now
    store = SegmentStore([tmp_path / "sim"], three_links, 0.0, 0)
    (problem,) = store.refresh()
    assert problem.endswith(
        "000001.mcap: its transitions have obs of 4 values (the task's: 3): record again with the task as it is"
    ), problem
