"""What a task is: its MJCF, a running cost and an observation, its MPPI settings, and the planner's bias.

The MJCF (models/<task>/<task>.xml) is the single source of the task's dynamics: the control period,
the action bounds, the state size, the start box and the episode length come from it (its <custom>
numerics where MuJoCo has no field; firmware_bridge/plant.py reads them), never restated here.

A state is MuJoCo's full physics state (time, qpos, qvel, act, ...: `mjSTATE_FULLPHYSICS`), so a state
means the same thing on the wire, in the logs and in every planner. Angles stay unwrapped in the state
(as MuJoCo keeps them); cost and success wrap them to [-pi, pi).

A cost or observation on a Cartesian point (a fingertip, a block) reads the MJCF's sensors at each state
(`sensordata`, `sensor`): MuJoCo's forward pass, computed through firmware_bridge.plant, so no task writes
kinematics and no task module imports MuJoCo.

The planner's bias is a tuple of `Parameter`s: model fields the planner gets wrong, each drawn from
U[low, high] (one draw per rollout), with the TRUE value read from the MJCF. A planner model is the
MjModel with those fields written (`write_params`): "biased", "mean" (the middle of each range) or
"true" (the MJCF's own values, only when a run asks for that baseline).

Optional fast path: a task with closed-form dynamics may add `step` in NumPy (the float64 reference,
vectorised over any leading axes) and `c_source` (per-sample C functions `<name>_step` and `<name>_cost`
that the C backend compiles and the GPU backend reuses). They integrate exactly as MuJoCo steps the
MJCF, and tests/onboard/test_tasks.py holds them to it. A task without them plans with the MuJoCo
backends (`mujoco` on the CPU, `warp` on the GPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from firmware_bridge.paths import MODELS_DIR
from firmware_bridge.plant import FieldWriter, TaskModel, model_xml

TWO_PI = 2.0 * math.pi
# Model fields that move where things are: sensordata, computed on the MJCF's model, would not follow a bias of them
# (body_ipos: a body's <framepos> is its centre of mass).
KINEMATIC_FIELDS = (
    *("body_pos", "body_quat", "body_ipos", "body_iquat", "site_pos", "site_quat", "site_size", "geom_pos"),
    *("geom_quat", "geom_size", "jnt_pos", "jnt_axis", "cam_pos", "cam_quat", "qpos0"),
)


@functools.cache
def constant(xp, values: tuple[float, ...], dtype):
    """values as an array of xp, made once: a CUDA graph capture may not copy from the host."""
    return xp.asarray(values, dtype=dtype)


def wrap_angle(theta):
    """Wrap to [-pi, pi)."""
    return (theta + math.pi) % TWO_PI - math.pi


# C helpers every task's C source may use; REAL is double on the CPU and float on the GPU (NVRTC has
# its math functions built in, without headers).
C_PRELUDE = r"""
#ifndef __CUDACC_RTC__
#include <math.h>
#endif
#ifndef REAL
#define REAL double
#endif
#ifndef MPQ_FN
#define MPQ_FN static inline
#endif
#define MPQ_PI ((REAL)3.14159265358979323846)
MPQ_FN REAL mpq_wrap_angle(REAL a) {
    REAL two_pi = 2 * MPQ_PI;
    return a - two_pi * floor((a + MPQ_PI) / two_pi);
}
MPQ_FN REAL mpq_clip(REAL x, REAL lo, REAL hi) { return x < lo ? lo : (x > hi ? hi : x); }
"""


@dataclass(frozen=True)
class Parameter:
    """One number the planner's model gets wrong, and its biased distribution U[low, high].

    `field` addresses MjModel values: "body_mass[ball]" (a row named by its object), "body_inertia[ball]"
    (all three values of the row), "body_ipos[pole][2]" (one column), "tendon_stiffness[0]" (a row by
    index), "dof_damping" (every row). Writing the parameter sets every value it addresses; its TRUE
    value is what the MJCF gives (all the addressed values must agree)."""

    field: str
    low: float
    high: float


def set_uniform_rod_inertia(fields, body: int, mass, com) -> None:
    """A uniform rod along the body's z axis, its centre of mass `com` from its end: m (2 com)^2 / 12 about x, y.
    fields.body_inertia: (n, nbody, 3); mass, com: (n,)."""
    fields.body_inertia[:, body, :2] = (mass * com * com / 3.0)[:, None]


class Task:
    """A control task. Subclasses give name, obs_dim, parameters, mppi_defaults, long_horizon, cost, obs
    and success; everything physical comes from the MJCF."""

    name: str
    obs_dim: int
    parameters: tuple[Parameter, ...]  # the planner's bias
    # The paper's MPPI settings for this task (Table 3): K, H, sigma, temperature (lambda), alpha, gamma, n_iters.
    mppi_defaults: dict
    long_horizon: int  # the "long MPPI" baseline horizon
    # The typical size of the task's values (discounted cost-to-go): the trained Q's output is this times its
    # network's, so that training reaches values of hundreds in a few hundred updates, not thousands.
    value_scale: float = 1.0
    # Model fields that follow from the parameters (a rod's inertia from its mass and length): `derive` sets them.
    derived_fields: tuple[str, ...] = ()
    reads_sensors = False  # whether cost, obs or success read sensordata (found by check_shapes when the task loads)
    _remembered: tuple = ()  # (states, their sensors) a backend handed over (remember_sensordata)
    c_source: str | None = None  # analytic fast path: `MPQ_FN void <name>_step(s, u, p, out)`, `<name>_cost(s, u)`
    models_dir: Path = MODELS_DIR  # where models/<name>/<name>.xml lives (a test may put a task elsewhere)

    def __init__(self, mass_scale: dict[str, float] | None = None):
        """mass_scale: the plant's bodies heavier than the MJCF says ({body: factor}, as the stand-in's
        --mass-scale), so that the "true" planner model is the plant's real one (robustness runs)."""
        missing = [a for a in ("obs_dim", "parameters", "mppi_defaults", "long_horizon") if not hasattr(self, a)]
        missing += [f for f in ("cost", "obs", "success") if getattr(type(self), f) is getattr(Task, f)]
        if missing:
            raise ValueError(f"task {self.name}: its class gives no {', '.join(missing)} (see onboard/tasks/base.py)")
        self.xml_path = model_xml(self.name, self.models_dir)
        self.mjcf = mjcf = TaskModel(self.xml_path, mass_scale=mass_scale)
        model = mjcf.model
        if model.nu == 0:
            raise ValueError(f"{self.xml_path}: no <actuator>: the planner commands the plant through its actuators")
        self.dt = mjcf.control_period
        self.u_min, self.u_max = mjcf.ctrl_low, mjcf.ctrl_high
        self.state_dim, self.act_dim = mjcf.state_dim, model.nu
        self.qpos, self.qvel = mjcf.qpos_slice, mjcf.qvel_slice  # where they sit in a state
        if mjcf.episode_steps is None:
            raise ValueError(f"{self.xml_path}: missing <custom><numeric name='episode_seconds' .../>")
        if mjcf.reset_low is None or mjcf.reset_high is None:
            raise ValueError(f"{self.xml_path}: missing the start box <custom><numeric name='reset_low'/'reset_high'>")
        self.episode_steps = mjcf.episode_steps
        self.param_names = tuple(p.field for p in self.parameters)
        self.bias_low = np.array([p.low for p in self.parameters], dtype=np.float64)
        self.bias_high = np.array([p.high for p in self.parameters], dtype=np.float64)
        self._writers = [FieldWriter(model, p.field, f"task {self.name}") for p in self.parameters]
        for writer, p in zip(self._writers, self.parameters, strict=True):
            writer.check_range(p.field, p.low, p.high, f"task {self.name}")
        self.true_params = self.read_params(model)  # the plant's: the MJCF is the truth

    def check_shapes(self) -> None:
        """cost, obs and success on a batch of two starts: what they give must be what the planner, the Q's
        input and the logs take, found when the task is made (get_task) rather than as segments the trainer
        leaves out."""
        s = np.stack([self.hanging_state(), self.initial_state(np.random.default_rng(0))])
        u = np.zeros((2, self.act_dim))
        self.reads_sensors = False  # set by sensordata
        for what, value, shape in (
            ("cost(s, u)", lambda: self.cost(s, u), (2,)),
            ("obs(s)", lambda: self.obs(s), (2, self.obs_dim)),
            ("success(s)", lambda: self.success(s), (2,)),
        ):
            try:
                got = np.shape(value())
            except Exception as e:  # the user's code: one line that names the function, not a traceback
                raise ValueError(
                    f"task {self.name}: {what} on states (2, {self.state_dim}) and actions (2, {self.act_dim}) "
                    f"raised {type(e).__name__}: {e}"
                ) from None
            if got != shape:
                raise ValueError(
                    f"task {self.name}: {what} on states (2, {self.state_dim}) and actions (2, {self.act_dim}) gives "
                    f"shape {got}, not {shape}" + (" (obs_dim)" if what == "obs(s)" else "")
                )
        moved = [f for f in (*self.param_names, *self.derived_fields) if f.split("[")[0] in KINEMATIC_FIELDS]
        if self.reads_sensors and moved:
            raise ValueError(
                f"task {self.name}: its cost, obs or success reads sensordata, computed on the MJCF's model, and its "
                f"bias moves {moved[0]}, which those sensors would not follow: bias fields that move no frame "
                "(masses, inertias, damping, stiffness)"
            )

    @property
    def bias_ranges(self) -> list[tuple[str, float, float]]:
        """(field address, low, high) of each parameter: what a domain-randomised stand-in draws its plant from."""
        return [(p.field, p.low, p.high) for p in self.parameters]

    @property
    def param_dim(self) -> int:
        return len(self.parameters)

    @property
    def has_analytic_model(self) -> bool:
        return self.c_source is not None

    # --- the planner's models -----------------------------------------------------------------
    def read_params(self, model) -> np.ndarray:
        """The parameters as the MjModel has them."""
        return np.array([w.read(model) for w in self._writers])

    @property
    def batched_fields(self) -> tuple[str, ...]:
        """Every MjModel field a draw writes: the parameters' own, then the derived ones."""
        return tuple(dict.fromkeys([w.field for w in self._writers] + list(self.derived_fields)))

    def write_params(self, model, params) -> None:
        """Make the MjModel the planner model with these parameters (one draw, (param_dim,))."""
        views = SimpleNamespace(**{f: getattr(model, f)[None] for f in self.batched_fields})  # one world's
        self.write_batch(views, np.asarray(params, dtype=np.float64)[None])

    def write_batch(self, fields, params) -> None:
        """The planner models of n worlds at once (MuJoCo Warp's batched fields): fields.<field> (n, ...)
        for every name in batched_fields, written in place from params (n, param_dim), on NumPy or CuPy."""
        for j, writer in enumerate(self._writers):
            writer.write_batch(getattr(fields, writer.field), params[:, j])
        self.derive(fields, params)

    def derive(self, fields, params) -> None:
        """Set derived_fields from params (n, param_dim) on fields with a leading world axis (none by default)."""

    def planner_params(self, model: str, shape: tuple[int, ...], rng, xp=np, dtype=np.float64):
        """Parameters for the planner's rollouts: (*shape, param_dim), or (param_dim,) shared by all.

        model: "biased" draws each rollout's parameters from U[bias_low, bias_high];
        "mean" fixes them at the middle of that range; "true" uses the plant's parameters
        (the upper-bound baseline, only when a run asks for it). `xp`, `rng` and `dtype` are the
        backend's array module, generator and float type (NumPy's, or CuPy's on the GPU).
        """
        if model == "biased":
            low, high = constant(xp, tuple(self.bias_low), dtype), constant(xp, tuple(self.bias_high), dtype)
            return low + (high - low) * rng.random((*shape, self.param_dim), dtype=dtype)
        if model == "mean":
            fixed = 0.5 * (self.bias_low + self.bias_high)
        elif model == "true":
            fixed = self.true_params
        else:
            raise ValueError(f"unknown planner model {model!r}: use 'biased', 'mean' or 'true'")
        return xp.asarray(fixed, dtype=dtype)

    # --- starts -------------------------------------------------------------------------------
    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A random start: qpos, qvel uniform in the MJCF's start box, time 0."""
        box = rng.uniform(self.mjcf.reset_low, self.mjcf.reset_high)
        return self.mjcf.full_state(box[: self.mjcf.model.nq], box[self.mjcf.model.nq :])

    def hanging_state(self) -> np.ndarray:
        """The hardest fixed start: the MJCF's keyframe "hanging", else its rest pose (qpos0, at rest)."""
        state = self.mjcf.keyframe_state("hanging")
        if state is None:
            state = self.mjcf.full_state(self.mjcf.model.qpos0, np.zeros(self.mjcf.model.nv))
        return state

    # --- what cost, obs and success may read besides the state ----------------------------------
    def sensor(self, name: str) -> slice:
        """Where the MJCF's sensor `name` sits in the last axis of `sensordata` (an error naming the MJCF's sensors
        if it has none of that name: call it in __init__, so that the task refuses to load)."""
        return self.mjcf.sensor(name)

    def remember_sensordata(self, s, data) -> None:
        """Sensors a MuJoCo backend computed while stepping to the states s (the array it hands to cost or obs),
        (..., nsensordata) on its arrays: sensordata(s) gives them for that very array instead of another forward
        pass. Only for a model whose sensors follow frames alone (TaskModel.frame_sensors_only): their values are the
        same on every draw. Kept until forget_sensordata (the backend's next rollout)."""
        self._remembered += ((s, data),)

    def forget_sensordata(self) -> None:
        self._remembered = ()

    def sensordata(self, s, u=None):
        """Every sensor of the MJCF at each state s (..., nstate): (..., nsensordata), the array type of s.

        A cost on a Cartesian point without writing the robot's kinematics: give the MJCF a <framepos> of the
        fingertip's site (or <framelinvel>, <framequat>, <jointpos>, ...) and read it here, as
        `self.sensordata(s)[..., self.sensor("tip")]`. It is MuJoCo's forward pass at each state, on the MJCF's
        model, not a draw's: a bias that moves frames is refused when the task loads (KINEMATIC_FIELDS), and sensors
        of masses (subtreecom) or of the acceleration stage (touch, accelerometer, actuator forces) give the MJCF's
        values; the latter see the actions u (..., act_dim), else zero actions. A diverged state gets NaN. The
        MuJoCo backends hand over what they computed while stepping (remember_sensordata); any other state costs
        about one MuJoCo step on the CPU, on the calling thread, and a GPU array goes to the host and back."""
        self.reads_sensors = True
        for known, data in self._remembered:
            if s is known:
                return data
        on_gpu = hasattr(s, "__cuda_array_interface__")  # CuPy's: NumPy cannot read it in place
        host = s.get() if on_gpu else np.asarray(s)
        lead = host.shape[:-1]
        controls = None
        if u is not None:  # one action per state (an action shared by leading axes is repeated over them)
            controls = np.broadcast_to(u.get() if on_gpu else np.asarray(u), (*lead, self.act_dim)).reshape(
                -1, self.act_dim
            )
        data = self.mjcf.sensordata(host.reshape(-1, host.shape[-1]), controls)
        data = data.reshape(*lead, self.mjcf.model.nsensordata)
        if on_gpu:
            import cupy

            return cupy.asarray(data, dtype=s.dtype)
        return data.astype(host.dtype, copy=False)

    # --- to be provided by each task (vectorised over leading axes; xp arrays on the GPU) -------
    def cost(self, s, u):
        raise NotImplementedError

    def obs(self, s):
        raise NotImplementedError

    def success(self, s):
        raise NotImplementedError

    def step(self, s, u, p):
        """Analytic fast path only: the next state after one control period; u within [u_min, u_max]."""
        raise NotImplementedError(f"task {self.name} has no analytic model: plan with the mujoco or warp backend")
