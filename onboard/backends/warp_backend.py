"""The warp backend: the task's MJCF stepped by MuJoCo Warp, every rollout of every start state one world.

MuJoCo Warp (`mujoco-warp`, the `warp` extra) runs MuJoCo's pipeline as Warp kernels over a batch of
worlds. Each rollout is a world; a biased draw is that world's row of the model's batched fields (the
task's `batched_fields`, written in place by `Task.write_batch`, on the device). The physics of a
rollout, from setting the start states to the last control period, is one Warp graph, captured on the
first rollout of a shape and replayed after. Warp compiles its kernels for the GPU or for the host CPU:

- GPU (a CUDA device): MPPI's arrays are CuPy's (float32), shared with Warp's buffers without a copy
  (CUDA array interface), and Warp replays its graph on MPPI's CUDA stream, which ONNX Runtime shares.
  The MPPI around the physics runs kernel by kernel (capturing Warp's graph inside CuPy's is unmeasured).
- CPU (every machine): MPPI's arrays stay NumPy float64, as the `mujoco` backend's, so the same noise
  gives the same plan within float32 tolerance; tests/onboard/test_mjcf_backends.py checks it. This is for
  correctness, not speed: on the CPU the `mujoco` backend is the fast one.

Kernels are compiled on first use (tens of seconds; cached in Warp's kernel cache, ~/.cache/warp).
MPQ_WARP_DEVICE=cpu keeps Warp on the CPU on a machine with a GPU (the tests' CPU checks do).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from types import SimpleNamespace

import mujoco
import numpy as np

from onboard.backends import CpuBackend
from onboard.backends.mujoco_backend import mjcf_rollout
from onboard.tasks.base import Task

log = logging.getLogger("mpq.backends.warp")
STATE_SPEC = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
# What MuJoCo's compiler derives from masses and inertias (the constraint solver's inverse weights, subtree
# masses), computed per world after each draw by MuJoCo's own mj_setConst on the host, as the mujoco backend
# does: MuJoCo Warp 4.0's set_const averages a body's inverse weight over directions it cannot move in
# (1/m * 2/3 for the ball on two slides, where mj_setConst gives 1/m), which softens its contacts.
DERIVED_FIELDS = ("body_subtreemass", "body_invweight0", "dof_invweight0", "tendon_invweight0", "actuator_acc0")


def _warp():
    try:
        import mujoco_warp
        import warp
    except ImportError:
        raise RuntimeError(
            "backend 'warp' needs MuJoCo Warp: pip install -e '.[warp]' (make setup installs it), or use backend "
            "'mujoco' on the CPU"
        ) from None
    warp.config.log_level = warp.LOG_WARNING  # no line per compiled module
    warp.init()
    return warp, mujoco_warp


@functools.cache
def _limit_speed_kernel():
    """firmware_bridge.plant.limit_speed as a Warp kernel over (world, joint)."""
    wp, _ = _warp()

    @wp.kernel
    def limit_speed(qpos: wp.array2d(dtype=float), qvel: wp.array2d(dtype=float), limit: float, timestep: float):
        world, joint = wp.tid()
        v = qvel[world, joint]
        limited = wp.clamp(v, -limit, limit)
        qpos[world, joint] = qpos[world, joint] + timestep * (limited - v)
        qvel[world, joint] = limited

    return limit_speed


class WarpWorlds:
    """n worlds of the task's MJCF on one Warp device, and the captured rollout of T control periods."""

    def __init__(self, backend: WarpBackend, n: int, T: int, batched: bool, sensed: bool):
        wp, mjw = backend.wp, backend.mjw
        task, self.wp, self.mjw, self.backend = backend.task, wp, mjw, backend
        mjcf = task.mjcf
        self.substeps, self.qvel_max, self.timestep = mjcf.substeps, mjcf.qvel_max, float(mjcf.model.opt.timestep)
        nstate, m = task.state_dim, task.act_dim
        with wp.ScopedDevice(backend.device):
            sizes = {field: n for field in (*task.batched_fields, *DERIVED_FIELDS)} if batched else {}
            self.model = mjw.put_model(mjcf.model, batch_sizes=sizes)
            self.data = mjw.make_data(mjcf.model, nworld=n)
            self.start = wp.zeros((n, nstate), dtype=float)
            self.controls = wp.zeros((T, n, m), dtype=float)
            self.visited = wp.zeros((T, n, nstate), dtype=float)
            self.active = wp.ones(n, dtype=bool)  # made here: set_state/get_state would allocate in the graph
            # sensed: the sensors at the start and at each visited state (mjcf_rollout hands them to the task)
            self.sensors = wp.zeros((T + 1, n, mjcf.model.nsensordata), dtype=float) if sensed else None
        # The same buffers as MPPI's arrays (views, no copies): NumPy on the CPU, CuPy on the GPU.
        view = backend.view
        self.start_x, self.controls_x, self.visited_x = view(self.start), view(self.controls), view(self.visited)
        self.sensors_x = view(self.sensors) if sensed else None
        # The planner model's fields, (n, ...) per world or (1, ...) shared: written in place, so the graph sees them.
        self.fields = SimpleNamespace(**{f: view(getattr(self.model, f)) for f in task.batched_fields})
        self.derived = {f: view(getattr(self.model, f)) for f in DERIVED_FIELDS}
        self._physics()  # compiles and loads every kernel before the capture
        with wp.ScopedDevice(backend.device), wp.ScopedStream(backend.warp_stream):
            with wp.ScopedCapture() as capture:
                self._physics()
        self.graph = capture.graph

    def _physics(self) -> None:
        """From the start states through every control period, recording the state after each."""
        wp, mjw, model, data = self.wp, self.mjw, self.model, self.data
        mjw.set_state(model, data, self.start, STATE_SPEC, active=self.active)
        data.qacc_warmstart.zero_()  # as the mujoco backend starts every rollout
        for t in range(self.controls.shape[0]):
            wp.copy(data.ctrl, self.controls[t])
            for k in range(self.substeps):
                mjw.step(model, data)
                if k == 0 and self.sensors is not None:  # the step's forward pass was at s_t
                    wp.copy(self.sensors[t], data.sensordata)
                if self.qvel_max is not None:
                    wp.launch(
                        _limit_speed_kernel(),
                        dim=data.qvel.shape,
                        inputs=[data.qpos, data.qvel, self.qvel_max, self.timestep],
                    )
            mjw.get_state(model, data, self.visited[t], STATE_SPEC, active=self.active)
        if self.sensors is not None:  # and at the last state, which no step started from
            mjw.forward(model, data)
            wp.copy(self.sensors[self.controls.shape[0]], data.sensordata)

    def write(self, params) -> None:
        """The planner model's fields from params ((n, P) per world, or (1, P) shared), and what follows from them
        (DERIVED_FIELDS: a few microseconds of mj_setConst per world on the host, then one copy each)."""
        task = self.backend.task
        task.write_batch(self.fields, params)
        (host_params,) = self.backend.to_host(params)
        model, data = self.backend.scratch
        derived = {f: np.empty((len(host_params), *getattr(model, f).shape)) for f in DERIVED_FIELDS}
        for i, row in enumerate(np.asarray(host_params, dtype=np.float64)):
            task.write_params(model, row)
            mujoco.mj_setConst(model, data)
            for f, values in derived.items():
                values[i] = getattr(model, f)
        for f, values in derived.items():
            target = self.derived[f]
            target[...] = self.backend.xp.asarray(values.reshape(target.shape), dtype=target.dtype)

    def __call__(self, start, controls, params):
        xp = self.backend.xp
        self.start_x[...] = start
        self.controls_x[...] = xp.moveaxis(controls, 1, 0)
        if params.ndim == 2:  # "biased": a new draw per world every iteration
            self.write(params)
        self.wp.capture_launch(self.graph, stream=self.backend.warp_stream)
        # Copies, not views of Warp's buffers: the next launch overwrites those, and a caller may keep what it got
        # (MPQ(lambda) keeps each step's states).
        visited = xp.moveaxis(xp.array(self.visited_x, dtype=self.backend.dtype), 0, 1)
        if self.sensors_x is None:
            return visited, None
        return visited, xp.moveaxis(xp.array(self.sensors_x, dtype=self.backend.dtype), 0, 1)


class WarpBackend(CpuBackend):
    """On the GPU: CuPy arrays on MPPI's stream (the cupy backend's noise, Q and host copies); on the CPU: NumPy."""

    name = "warp"

    def __init__(self, task: Task, device: str | None = None):
        """device: a Warp device ("cpu", "cuda:0"); None: $MPQ_WARP_DEVICE, else the first GPU, else the CPU."""
        self.wp, self.mjw = _warp()
        self.task = task
        device = device or os.environ.get("MPQ_WARP_DEVICE")
        self.device = device or ("cuda:0" if self.wp.get_cuda_device_count() > 0 else "cpu")
        self._worlds: dict[tuple, WarpWorlds] = {}
        if self.device.startswith("cuda"):
            from onboard.backends.cupy_backend import CupyBackend

            # The cupy backend's arrays, generators, device Q and stream, without its analytic kernel.
            self.gpu = CupyBackend(task, kernel=False)
            self.gpu.graphs = False  # MPPI kernel by kernel around Warp's graph (module docstring)
            self.xp, self.dtype = self.gpu.xp, self.gpu.dtype
            self.warp_stream = self.wp.Stream(self.wp.get_device(self.device), cuda_stream=self.gpu.stream.ptr)
            self.view = self.xp.asarray
            for name in ("scope", "rng", "to_host", "run_as_graph", "device_q", "memory_bytes"):
                setattr(self, name, getattr(self.gpu, name))
        else:
            self.gpu = None
            self.warp_stream = None
            self.view = lambda array: array.numpy()  # a NumPy view of a CPU Warp array's memory
        scratch = copy.copy(task.mjcf.model)
        self.scratch = (scratch, mujoco.MjData(scratch))  # for each draw's mj_setConst (WarpWorlds.write)

    def visit(self, start, controls, params, sensed: bool = False):
        """States (n, nstate) after each of the control periods in controls (n, T, m): (n, T, nstate); and if
        sensed the sensors at the start and at each of those states (n, T + 1, nsensordata), else None."""
        n, T, _ = controls.shape
        key = (n, T, params.ndim == 2, None if params.ndim == 2 else tuple(float(v) for v in params), sensed)
        worlds = self._worlds.get(key)
        if worlds is None:
            worlds = self._worlds[key] = WarpWorlds(self, n, T, batched=params.ndim == 2, sensed=sensed)
            if params.ndim == 1:  # "mean" or "true": one model for every world, written once
                worlds.write(params[None])
        return worlds(start, controls, params)

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        return mjcf_rollout(self, states, actions, params, gamma)
