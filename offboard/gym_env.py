"""Every task as a Gymnasium environment, on the hardware path: `import offboard.gym_env` registers them.

    env = gymnasium.make("mpq/Pendulum-v0")               # each step a command over the serial link
    env = gymnasium.make("mpq/Pendulum-v0", robot="jetson")   # the port of a robot profile instead
    env = gymnasium.make("mpq/PendulumMujoco-v0")         # the same task in plain MuJoCo, in-process

`mpq/<Task>-v0` steps the plant exactly as the onboard loop does: the profile's port (the sim profile's
firmware stand-in on a pty, by default), the MAVLink handshake, reset to the episode's start, arm, then
one command and one state per step in lockstep. It is for checking an algorithm on the robot's own path
(its link, its firmware, its failsafes), not a fast simulator: `make bench` does not time it, and the
README says what one run printed. `mpq/<Task>Mujoco-v0` steps the same MJCF (MujocoPlant) without the
link, for speed.

Observation: the task's (`Task.obs`); action: the actuators' range; reward: minus the task's cost of the
state the action was taken in (the cost the logs record); an episode is the task's length, then truncated.
The tasks have no terminal states: an episode is never terminated. A failsafe the plant latches truncates it too,
with the failsafe in `info` (Gymnasium's truncation, a condition outside the task: were it a termination, a
learner with costs as negative rewards would learn to trip failsafes to stop paying them); a non-finite action
latches one on both paths, as the firmware does. After a failsafe, `reset()` re-arms the plant (the caller was
told, and asks for a new episode); `step()` before it is an error.
Seeding: `reset(seed=...)` seeds Gymnasium's generator, from which each start is drawn in the task's
start box. `render_mode="rgb_array"` draws the state with MuJoCo's offscreen renderer.
"""

from __future__ import annotations

import contextlib
import sys

import gymnasium
import numpy as np
from gymnasium import spaces

from firmware_bridge.cli import ArgumentParser
from firmware_bridge.dialect import mavlink
from onboard.loop import STATE_TIMEOUT
from onboard.plant_port import open_plant
from onboard.profile import load_profile
from onboard.tasks import TASKS, get_task

ENV_NAMES = {"pendulum": "Pendulum", "cartpole": "CartPole", "ball_in_cup": "BallInCup"}


def env_id(task: str, path: str = "link") -> str:
    """mpq/<Task>-v0 (the hardware path) or mpq/<Task>Mujoco-v0 (plain MuJoCo)."""
    name = ENV_NAMES.get(task, "".join(part.title() for part in task.split("_")))
    return f"mpq/{name}{'' if path == 'link' else 'Mujoco'}-v0"


def spaces_for(task) -> tuple[spaces.Box, spaces.Box]:
    """(observation space, action space): the task's observation; the actuators' range (float32, as on the wire)."""
    observation = spaces.Box(-np.inf, np.inf, (task.obs_dim,), dtype=np.float64)
    return observation, spaces.Box(task.u_min.astype(np.float32), task.u_max.astype(np.float32))


class MpqEnv(gymnasium.Env):
    """One task through the serial link to the profile's plant (`path="link"`), or in plain MuJoCo (`"mujoco"`)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str = "pendulum", robot: str = "sim", path: str = "link", render_mode: str | None = None):
        if path not in ("link", "mujoco"):
            raise ValueError(f"path {path!r}: use link (the serial link to the profile's plant) or mujoco")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r}: use rgb_array or None")
        self.task = get_task(task)
        self.path, self.render_mode = path, render_mode
        self.metadata = {**self.metadata, "render_fps": round(1 / self.task.dt)}
        self.profile = load_profile(robot, task=task, mode="lockstep") if path == "link" else None
        self.observation_space, self.action_space = spaces_for(self.task)
        self._plant_context = self._link = self._plant = None
        self._state = None
        self._episode = 0
        self._steps = 0
        self._failsafe = 0  # the failsafe that ended the episode: reset re-arms it

    # --- the plant ---------------------------------------------------------------------------------
    def _open(self) -> None:
        """The plant, at the first reset: the profile's plant over a handshaken link (as the loop opens it), or
        the MuJoCo plant built in-process."""
        if self.path == "mujoco":
            from firmware_bridge.plant import MujocoPlant

            self._plant = MujocoPlant(self.task.xml_path)
            return
        self._plant_context = contextlib.ExitStack()
        try:
            self._link = self._plant_context.enter_context(
                open_plant(self.profile, self.task, self.profile.signing_key())
            )
        except BaseException:
            self.close()
            raise

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._link is None and self._plant is None:
            self._open()
        start = self.task.initial_state(self.np_random)
        self._episode += 1
        self._steps = 0
        if self._plant is not None:
            self._state = self._plant.reset(start)
        else:
            self._link.disarm()
            self._state = self._link.reset(self._episode, state=start)
            if self._failsafe:
                self._link.rearm()
            else:
                self._link.arm()
        self._failsafe = 0
        return self.task.obs(self._current()), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("step before reset: call env.reset() first")
        if self._failsafe:
            raise RuntimeError(f"the episode ended with failsafe {self._failsafe}: call env.reset() for the next")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action of shape {action.shape}: {self.task.name} takes {self.action_space.shape}")
        u = np.clip(action, self.task.u_min, self.task.u_max)
        finite = bool(np.all(np.isfinite(u)))
        applied = u if finite else np.zeros_like(u)  # a non-finite command: the failsafe, the actuators off
        cost = float(self.task.cost(self._current(), applied))
        info = {}
        if self._plant is not None:  # as the firmware does
            self._state = self._plant.step(applied)
            if not finite:
                info["failsafe"] = int(mavlink.MPQ_FAILSAFE_NONFINITE_COMMAND)
        else:
            state = self._link.exchange(u, self._state.seq, STATE_TIMEOUT)
            if state is None:
                raise RuntimeError(f"the plant sent no state for {STATE_TIMEOUT:.0f} s: check the link and firmware")
            self._state = state
            if state.failsafe:
                info["failsafe"] = int(state.failsafe)
        self._steps += 1
        self._failsafe = info.get("failsafe", 0)
        truncated = self._steps >= self.task.episode_steps or bool(self._failsafe)
        return self.task.obs(self._current()), -cost, False, truncated, info

    def _current(self) -> np.ndarray:
        return self._state if self._plant is not None else self._state.state

    def render(self):
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        return self.task.mjcf.render(self._current())

    def close(self) -> None:
        """Disarm, close the link and stop the stand-in it started."""
        if self._link is not None:
            try:
                self._link.disarm(timeout=0.5)
            except Exception:  # a plant already gone or in failsafe: its actuators are off
                pass
            self._link = None
        self._plant = self._state = None  # a step now is a step before reset
        if self._plant_context is not None:
            self._plant_context.close()
            self._plant_context = None


def register_envs() -> None:
    """mpq/<Task>-v0 (the hardware path) and mpq/<Task>Mujoco-v0 (plain MuJoCo) for every task."""
    for task in TASKS:
        steps = get_task(task).episode_steps
        for path in ("link", "mujoco"):
            name, kwargs = env_id(task, path), dict(task=task, path=path)
            if name not in gymnasium.registry:
                gymnasium.register(name, "offboard.gym_env:MpqEnv", kwargs=kwargs, max_episode_steps=steps)


register_envs()


def main(argv=None) -> int:
    """`python -m offboard.gym_env [--task T] [--episodes N]`: random actions on both paths, steps per second."""
    import time

    parser = ArgumentParser(prog="python -m offboard.gym_env", description=main.__doc__)
    parser.add_argument("--task", default="pendulum", choices=sorted(TASKS))
    parser.add_argument("--episodes", type=int, default=2)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        print(f"error: --episodes {args.episodes}: use 1 or more", file=sys.stderr)
        return 2
    for path in ("link", "mujoco"):
        env = gymnasium.make(env_id(args.task, path))
        env.action_space.seed(0)
        steps, seconds = 0, 0.0
        try:
            for episode in range(args.episodes):
                env.reset(seed=episode)
                started, done = time.perf_counter(), False
                while not done:
                    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                    steps, done = steps + 1, terminated or truncated
                seconds += time.perf_counter() - started
        finally:
            env.close()
        print(f"{env_id(args.task, path)}: {steps} steps, {steps / seconds:.0f} steps/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
