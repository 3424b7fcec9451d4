"""The MuJoCo backend: any task's MJCF stepped by MuJoCo itself on the CPU, through `mujoco.rollout`.

No hand-written dynamics: the planner model is the task's MjModel, and a biased draw is a perturbed copy
of it: one MjModel per rollout for "biased" (made once; each iteration every draw's fields are computed
at once by `Task.write_batch` and copied in), one shared model for "mean" and "true". `mujoco.rollout`
steps all B x K rollouts in C on a persistent thread pool (one MjData per thread) from the full physics
states the plant reported; the running cost is then one vectorised call of the task's cost over every
visited state, with no Python loop over samples or steps. A model with a joint speed limit (`qvel_max`)
is stepped one physics step per call with the limit applied between calls, as the plant applies it
(firmware_bridge.plant.limit_speed).

Threads: the profile's `threads` (default: every core). The pool starts on the first plan, from the
thread that plans, so its workers inherit the control loop's scheduling and CPU affinity.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from firmware_bridge.plant import limit_speed, sound_states
from onboard.backends import CpuBackend, check_rollout_shapes
from onboard.tasks.base import Task


def mjcf_rollout(backend, states, actions, params, gamma):
    """The rollout contract for a backend that steps the MJCF (this one, and warp's): the states each
    rollout visits come from backend.visit(start (n, nstate), controls (n, H-1, m), params), and the
    running cost is one vectorised call of the task's cost over all of them, on the backend's arrays.

    A task whose cost or observation reads sensors gets those the backend computed while stepping, where they
    read only where frames are and how fast they move (Task.remember_sensordata): for the path the cost reads and
    for the last states MPQ's terminal value reads, no second forward pass."""
    task, xp = backend.task, backend.xp
    check_rollout_shapes(task, states, actions, params)
    task.forget_sensordata()
    B, K, H, m = actions.shape
    n = B * K
    start = xp.repeat(xp.asarray(states, dtype=backend.dtype), K, axis=0)
    if H == 1:
        return xp.zeros((B, K), dtype=backend.dtype), start.reshape(B, K, -1)
    controls = xp.ascontiguousarray(actions[:, :, : H - 1]).reshape(n, H - 1, m)
    sensed = task.reads_sensors and task.mjcf.frame_sensors_only
    visited, sensors = backend.visit(start, controls, params if params.ndim == 1 else params.reshape(n, -1), sensed)
    path = xp.concatenate([start[:, None], visited[:, :-1]], axis=1)  # s_0 .. s_{H-2}
    last = visited[:, -1].reshape(B, K, -1)
    if sensors is not None:  # (n, H, nsensordata): at s_0 .. s_{H-1}
        # NaN where a state diverged, as sensordata gives: MuJoCo reset it and sensed the rest pose
        sound = sound_states(xp.concatenate([start[:, None], visited], axis=1), xp)
        sensors = xp.where(sound[..., None], sensors, xp.nan)
        task.remember_sensordata(path, sensors[:, :-1])
        task.remember_sensordata(last, sensors[:, -1].reshape(B, K, -1))
    discounts = xp.asarray(gamma ** np.arange(H - 1), dtype=backend.dtype)
    running = (task.cost(path, controls) * discounts).sum(axis=1)
    return running.reshape(B, K), last


# Biased rollouts' models held at once (each a copy of the MjModel, 0.1 MB for the ball-in-cup): a trainer's
# held-out Bellman error over 800 states x 36 samples once held 29k of them (3.3 GB), growing with the data.
MAX_MODELS = 2048


class MujocoBackend(CpuBackend):
    name = "mujoco"

    def __init__(self, task: Task, threads: int | None = None):
        self.task = task
        self.model = copy.copy(task.mjcf.model)  # the planner's own: perturbing it never touches the task's
        self.substeps, self.qvel_max = task.mjcf.substeps, task.mjcf.qvel_max
        self.timestep = float(self.model.opt.timestep)
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self._pool = None
        self._data = None
        self._biased: list[mujoco.MjModel] = []  # one per rollout, grown to the largest B x K seen
        self._field_views: list[list[np.ndarray]] = []  # each biased model's batched fields
        self._fixed: dict[tuple[float, ...], mujoco.MjModel] = {}  # "mean" / "true": one model each
        self._const_data: mujoco.MjData | None = None  # scratch for mj_setConst

    @property
    def pool(self) -> mj_rollout.Rollout:
        """MuJoCo's thread pool (none with one thread: rollouts then run on the calling thread)."""
        if self._pool is None:
            self._pool = mj_rollout.Rollout(nthread=0 if self.threads == 1 else self.threads)
            self._data = [mujoco.MjData(self.model) for _ in range(self.threads)]
        return self._pool

    def planner_models(self, params: np.ndarray, n: int):
        """The MjModel(s) the n rollouts step: params (P,) shared, or (n, P) one draw per rollout."""
        if params.ndim == 1:
            key = tuple(float(v) for v in params)
            if key not in self._fixed:
                self._fixed[key] = model = copy.copy(self.model)
                self.task.write_params(model, params)
                self._set_constants(model)
            return self._fixed[key]
        fields = self.task.batched_fields
        while len(self._biased) < n:
            model = copy.copy(self.model)
            self._biased.append(model)
            self._field_views.append([getattr(model, f) for f in fields])  # views into the model's memory
        # Every draw's fields computed at once (Task.write_batch, as MuJoCo Warp's batched fields), then
        # copied into each rollout's model: no per-model Python beyond one copy per field.
        batch = SimpleNamespace(**{f: np.repeat(getattr(self.model, f)[None], n, axis=0) for f in fields})
        self.task.write_batch(batch, params)
        for j, f in enumerate(fields):
            values = getattr(batch, f)
            for views, row in zip(self._field_views[:n], values, strict=True):
                views[j][...] = row
        for model in self._biased[:n]:
            self._set_constants(model)
        return self._biased[:n]

    def _set_constants(self, model: mujoco.MjModel) -> None:
        """What MuJoCo's compiler derives from the written fields (the constraint solver's inverse weights,
        subtree masses: mj_setConst, a few microseconds): a draw's model is then the MJCF compiled with that
        draw, as the plant would be (a heavier ball without it is caught by a string as soft as the light one's)."""
        if self._const_data is None:
            self._const_data = mujoco.MjData(self.model)
        mujoco.mj_setConst(model, self._const_data)

    def step(self, models: list, start: np.ndarray, controls: np.ndarray, sensed: bool = False):
        """mujoco.rollout of n rollouts over controls (n, nstep, m), one control per physics step: the states
        (n, nstep, nstate), and if sensed the sensors of the state each physics step starts from (its forward
        pass), else None. Shapes are right by construction: MuJoCo's per-call checks (which ask every
        model its state size) are skipped, and every rollout starts with a zero solver warm start, so it
        does not matter which thread ran what before."""
        n, nstep, _ = controls.shape
        path = np.empty((n, nstep, start.shape[1]))
        sensors = np.empty((n, nstep, self.model.nsensordata)) if sensed else None
        warmstart = np.zeros((n, self.model.nv))
        control_spec = int(mujoco.mjtState.mjSTATE_CTRL)
        self.pool.rollout(
            models,
            self._data,
            start,
            controls,
            control_spec=control_spec,
            skip_checks=True,
            nstep=nstep,
            initial_warmstart=warmstart,
            state=path,
            sensordata=sensors,
        )
        return path, sensors

    def visit(self, start: np.ndarray, controls: np.ndarray, params: np.ndarray, sensed: bool = False):
        """States (n, nstate) after each of the control periods in controls (n, T, m): (n, T, nstate); and if
        sensed the sensors at the start and at each of those states (n, T + 1, nsensordata), else None. Biased
        rollouts go MAX_MODELS at a time, so memory stays bounded whatever the batch (a trainer's held-out set)."""
        params = np.asarray(params, dtype=np.float64)
        n = controls.shape[0]
        if params.ndim == 2 and n > MAX_MODELS:
            parts = [
                self._visit(start[i : i + MAX_MODELS], controls[i : i + MAX_MODELS], params[i : i + MAX_MODELS], sensed)
                for i in range(0, n, MAX_MODELS)
            ]
            return np.concatenate([p[0] for p in parts]), (np.concatenate([p[1] for p in parts]) if sensed else None)
        return self._visit(start, controls, params, sensed)

    def _visit(self, start: np.ndarray, controls: np.ndarray, params: np.ndarray, sensed: bool):
        n, T, m = controls.shape
        models = self.planner_models(params, n)
        models = [models] * n if isinstance(models, mujoco.MjModel) else models
        start, controls = np.ascontiguousarray(start), np.ascontiguousarray(controls, dtype=np.float64)
        if self.qvel_max is None:
            path, sensors = self.step(models, start, np.repeat(controls, self.substeps, axis=1), sensed)
            visited = path[:, self.substeps - 1 :: self.substeps]
            if sensed:  # each period's first physics step starts from s_t; the last state's from one more pass
                last = self.task.mjcf.sensordata(visited[:, -1])[:, None]
                sensors = np.concatenate([sensors[:, :: self.substeps], last], axis=1)
            return visited, sensors
        # The speed limit acts between physics steps, as on the plant: one call per physics step.
        qpos, qvel = self.task.mjcf.qpos_slice, self.task.mjcf.qvel_slice
        visited, state = np.empty((n, T, start.shape[1])), start
        sensors = np.empty((n, T + 1, self.model.nsensordata)) if sensed else None
        for t in range(T):
            control = np.ascontiguousarray(controls[:, t : t + 1])
            for k in range(self.substeps):
                path, sensed_here = self.step(models, state, control, sensed and k == 0)
                state = path[:, 0]
                if sensed_here is not None:
                    sensors[:, t] = sensed_here[:, 0]
                limit_speed(state[:, qpos], state[:, qvel], self.qvel_max, self.timestep)
            visited[:, t] = state
        if sensed:  # the last state: no step of this rollout started from it
            sensors[:, T] = self.task.mjcf.sensordata(state)
        return visited, sensors

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        return mjcf_rollout(self, states, actions, params, gamma)
