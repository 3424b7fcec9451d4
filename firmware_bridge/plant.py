"""The TRUE plant: a task's MuJoCo model with its true parameters, stepped one control period at a time.

The stand-in is the only code that steps the true plant, and it steps it through this class. It
needs nothing but models/<task>/<task>.xml: the control period and an optional joint speed limit
come from the MJCF <custom> numerics `control_period` and `qvel_max`, the actuator limits from
ctrlrange (MuJoCo clamps ctrl to it). The speed limit acts like a motor driver's governor and like Gym's
Pendulum: the velocity is limited before it moves the position.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mujoco
import numpy as np

from firmware_bridge.paths import MODELS_DIR

log = logging.getLogger("mpq.plant")
# MuJoCo's warnings go to our log, not to MUJOCO_LOG.TXT in whatever folder the plant runs from.
mujoco.set_mju_user_warning(lambda message: log.warning("mujoco: %s", message))


def model_xml(task: str, models_dir: Path = MODELS_DIR) -> Path:
    path = Path(models_dir) / task / f"{task}.xml"
    if not path.is_file():
        raise FileNotFoundError(f"no MuJoCo model for task {task!r} at {path}: add models/{task}/{task}.xml")
    return path


def custom_numeric(model: mujoco.MjModel, name: str) -> np.ndarray | None:
    """An MJCF <custom><numeric name=...> value, or None."""
    for i in range(model.nnumeric):
        if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_NUMERIC, i) == name:
            return np.array(model.numeric(i).data, dtype=np.float64)
    return None


class MujocoPlant:
    """One MuJoCo model and its data; state = concat(qpos, qvel)."""

    def __init__(self, xml_path: str | Path, control_period: float | None = None):
        """control_period overrides the XML's (benchmarks of fast loops); physics then steps at most that long."""
        self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        self.data = mujoco.MjData(self.model)
        period = custom_numeric(self.model, "control_period")
        if period is None:
            raise ValueError(f"{xml_path}: missing <custom><numeric name='control_period' .../>")
        self.control_period = period = float(period[0]) if control_period is None else control_period
        if self.model.opt.timestep > period:
            self.model.opt.timestep = period
        self.substeps = round(period / self.model.opt.timestep)
        if abs(self.substeps * self.model.opt.timestep - period) > 1e-9:
            raise ValueError(f"{xml_path}: control_period {period} is not a multiple of timestep")
        qvel_max = custom_numeric(self.model, "qvel_max")
        self.qvel_max = None if qvel_max is None else float(qvel_max[0])
        if self.qvel_max is not None and self.model.nq != self.model.nv:
            raise ValueError(f"{xml_path}: qvel_max needs nq == nv (hinge and slide joints only)")
        self.ctrl_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = self.model.actuator_ctrlrange[:, 1].copy()

    @classmethod
    def for_task(cls, task: str, models_dir: Path = MODELS_DIR) -> MujocoPlant:
        return cls(model_xml(task, models_dir))

    def invalid_state(self, state) -> str | None:
        """Why `state` cannot be a start state of this plant (wrong size, non-finite, out of its limits)."""
        state = np.asarray(state, dtype=np.float64)
        nq, nv = self.model.nq, self.model.nv
        if state.shape != (nq + nv,):
            return f"{state.size} values for a state of {nq + nv}"
        if not np.all(np.isfinite(state)):
            return "non-finite values"
        if self.qvel_max is not None and np.any(np.abs(state[nq:]) > self.qvel_max):
            return f"a joint speed beyond {self.qvel_max}"
        for j in range(self.model.njnt):
            if self.model.jnt_limited[j]:
                lo, hi = self.model.jnt_range[j]
                q = state[self.model.jnt_qposadr[j]]
                if not lo <= q <= hi:
                    return f"joint {j} at {q:.3g}, outside its range [{lo}, {hi}]"
        if np.any(np.abs(state) > 1e3):
            return "values beyond 1e3"
        return None

    def fault(self, state: np.ndarray | None = None) -> str | None:
        """Why the simulated plant can no longer be trusted (MuJoCo reset it after a divergence), or None.

        `state`: the current state when the caller already has it (the stand-in does, every step)."""
        for kind in (
            mujoco.mjtWarning.mjWARN_BADQACC,
            mujoco.mjtWarning.mjWARN_BADQVEL,
            mujoco.mjtWarning.mjWARN_BADQPOS,
        ):
            if self.data.warning[kind].number > 0:
                return f"simulation diverged ({kind.name})"
        if not np.all(np.isfinite(self.state if state is None else state)):
            return "non-finite state"
        return None

    @property
    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def reset(self, state) -> np.ndarray:
        mujoco.mj_resetData(self.model, self.data)
        nq = self.model.nq
        self.data.qpos[:] = state[:nq]
        self.data.qvel[:] = state[nq:]
        mujoco.mj_forward(self.model, self.data)
        return self.state

    def step(self, u) -> np.ndarray:
        """Hold u for one control period; returns the new state."""
        self.data.ctrl[:] = u
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
            if self.qvel_max is not None:
                self._limit_speed()
        return self.state

    def _limit_speed(self) -> None:
        """Euler moved qpos by timestep * qvel; move it by the limited velocity instead (Gym's order)."""
        qpos, qvel, limit = self.data.qpos, self.data.qvel, self.qvel_max
        for i in range(qvel.shape[0]):  # a few joints: plain Python beats numpy's call overhead here
            v = qvel[i]
            if v > limit or v < -limit:
                limited = limit if v > 0 else -limit
                qpos[i] += self.model.opt.timestep * (limited - v)
                qvel[i] = limited
