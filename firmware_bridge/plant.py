"""A task's MJCF: what it says about the task, and the TRUE plant stepped one control period at a time.

The MJCF under models/<task>/ is the single source of a task's dynamics. Besides the physics, it says
with <custom> numerics what MuJoCo has no field for: `control_period` (s), an optional joint speed
limit `qvel_max`, the start box `reset_low`/`reset_high` (over qpos then qvel) and `episode_seconds`.
The actuator limits are its ctrlrange (MuJoCo clamps ctrl to it).

A state is MuJoCo's full physics state (`mjSTATE_FULLPHYSICS`: time, qpos, qvel, act, and the few
other things MuJoCo needs to continue a simulation exactly), so the plant, the wire, the logs and every
planner mean the same vector, and a planner that steps MuJoCo starts from exactly what the plant reports.

The stand-in (and the plain-MuJoCo Gymnasium environment, offboard/gym_env.py) step the true plant,
through `MujocoPlant`; `TaskModel.render` draws a state offscreen (EGL where no display is set). The speed limit acts
like a motor driver's governor and like Gym's Pendulum: the velocity is limited before it moves the
position (`limit_speed`, which the MuJoCo planner backends apply the same way).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import threading
from pathlib import Path

if not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless: MuJoCo picks its GL backend when first imported
import mujoco  # noqa: E402
import numpy as np
from mujoco import rollout as mj_rollout  # noqa: E402

from firmware_bridge.paths import FOLDER_NAME, MODELS_DIR

log = logging.getLogger("mpq.plant")
# MuJoCo's warnings go to our log, not to MUJOCO_LOG.TXT in whatever folder the plant runs from.
mujoco.set_mju_user_warning(lambda message: log.warning("mujoco: %s", message))

STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS
SHADOW_MAP = 1024  # texels a side of the shadow map a render draws (render)
# Sensors whose values follow from the state and where things are (body, site, geom, joint and tendon geometry)
# alone; a task may not bias those fields (onboard.tasks.base.KINEMATIC_FIELDS).
KINEMATIC_SENSORS = (
    *("FRAMEPOS", "FRAMEQUAT", "FRAMEXAXIS", "FRAMEYAXIS", "FRAMEZAXIS", "FRAMELINVEL", "FRAMEANGVEL"),
    *("JOINTPOS", "JOINTVEL", "BALLQUAT", "BALLANGVEL", "TENDONPOS", "TENDONVEL", "VELOCIMETER", "GYRO", "CLOCK"),
    *("GEOMDIST", "GEOMNORMAL", "GEOMFROMTO", "INSIDESITE"),
)
MAX_VALUE = 1e10  # MuJoCo's mjMAXVAL: a state value beyond it is a diverged simulation, which mj_step resets


def sound_states(states, xp=np):
    """Which states (..., nstate) are not diverged (every value finite and within MAX_VALUE; a NaN compares False):
    MuJoCo resets the others to the rest pose, so their sensors are NaN, not the rest pose's (NumPy or CuPy)."""
    return xp.all(xp.abs(states) < MAX_VALUE, axis=-1)


def model_xml(task: str, models_dir: Path = MODELS_DIR) -> Path:
    if not Path(models_dir).is_dir():
        raise FileNotFoundError(
            f"no models folder {models_dir}: give the folder that holds <task>/<task>.xml (MPQ_MODELS_DIR, or the "
            "stand-in's --models)"
        )
    if not FOLDER_NAME.fullmatch(task):
        raise FileNotFoundError(f"no MuJoCo model for task {task!r}: a task is a folder name under {models_dir}")
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


def state_size(model: mujoco.MjModel) -> int:
    return mujoco.mj_stateSize(model, STATE_SPEC)


def state_layout(model: mujoco.MjModel) -> tuple[slice, slice, slice]:
    """Where time, qpos and qvel sit in a full physics state (MuJoCo's order: time, qpos, qvel, act, ...)."""
    nq, nv = model.nq, model.nv
    return slice(0, 1), slice(1, 1 + nq), slice(1 + nq, 1 + nq + nv)


def limit_speed(qpos: np.ndarray, qvel: np.ndarray, limit: float, timestep: float) -> None:
    """In place: Euler moved qpos by timestep * qvel; move it by the limited velocity instead (Gym's order).
    Works on one state or a batch (leading axes); needs nq == nv."""
    limited = np.clip(qvel, -limit, limit)
    qpos += timestep * (limited - qvel)
    qvel[...] = limited


def parse_mass_scale(items: list[str]) -> dict[str, float]:
    """["pole=1.3", ...] (a command line's) -> {"pole": 1.3}; a malformed item is one ValueError naming the form."""
    scale = {}
    for item in items:
        body, _, factor = item.partition("=")
        try:
            value = float(factor)
        except ValueError:
            raise ValueError(f"mass scale {item!r}: write BODY=FACTOR, e.g. pole=1.3") from None
        if not body.strip():
            raise ValueError(f"mass scale {item!r}: write BODY=FACTOR, e.g. pole=1.3")
        if body.strip() in scale:
            given = ", ".join(i for i in items if i.partition("=")[0].strip() == body.strip())
            raise ValueError(f"mass scale: body {body.strip()!r} given twice ({given}): give each body once")
        scale[body.strip()] = value
    return scale


# The object that the first axis of an MjModel field counts, by the field's prefix: so rows may be named.
FIELD_OBJECTS = {
    "body": mujoco.mjtObj.mjOBJ_BODY,
    "jnt": mujoco.mjtObj.mjOBJ_JOINT,
    "dof": mujoco.mjtObj.mjOBJ_JOINT,  # a dof is named by its joint (the joint's first dof)
    "geom": mujoco.mjtObj.mjOBJ_GEOM,
    "site": mujoco.mjtObj.mjOBJ_SITE,
    "tendon": mujoco.mjtObj.mjOBJ_TENDON,
    "actuator": mujoco.mjtObj.mjOBJ_ACTUATOR,
    "eq": mujoco.mjtObj.mjOBJ_EQUALITY,
}


def field_row(model: mujoco.MjModel, field: str, row: str) -> int:
    """The row of MjModel.<field> that `row` names (an object's name, or a number); -1 if there is none."""
    if row.isdigit():
        return int(row)
    kind = FIELD_OBJECTS.get(field.split("_")[0])
    number = -1 if kind is None else mujoco.mj_name2id(model, kind, row)
    if number >= 0 and field.startswith("dof_"):
        number = int(model.jnt_dofadr[number])
    return number


FIELD_ADDRESS = re.compile(r"^(?P<field>[a-z_0-9]+)(\[(?P<row>[^\]]+)\])?(\[(?P<col>\d+)\])?$")
# Fields whose values have a sign that physics needs: a body without mass or inertia cannot move (MuJoCo's mass
# matrix turns singular), and negative damping, friction or stiffness feeds energy in.
POSITIVE_FIELDS = ("body_mass", "body_inertia")
NONNEGATIVE_FIELDS = (
    "dof_damping",
    "dof_frictionloss",
    "dof_armature",
    "jnt_stiffness",
    "tendon_stiffness",
    "tendon_damping",
    "tendon_frictionloss",
    "geom_friction",
)


class FieldWriter:
    """A field address resolved against one MjModel: read and write its values fast.

    The address names MjModel values: "body_mass[ball]" (a row named by its object), "body_inertia[ball]" (all
    three values of the row), "body_ipos[pole][2]" (one column), "tendon_stiffness[0]" (a row by index),
    "dof_damping" (every row). All the addressed values must agree (they are one number)."""

    def __init__(self, model, address: str, where: str):
        match = FIELD_ADDRESS.match(address)
        if match is None:
            raise ValueError(f"{where}: bias field {address!r} is not field, field[row] or field[row][col]")
        field, row, col = match["field"], match["row"], match["col"]
        values = getattr(model, field, None)
        if not isinstance(values, np.ndarray):
            raise ValueError(f"{where}: bias field {address!r}: MjModel has no array field {field!r}")
        index: tuple = (slice(None),)
        if row is not None:
            number = field_row(model, field, row)
            if not 0 <= number < values.shape[0]:
                raise ValueError(f"{where}: bias field {address!r}: the MJCF has no {row!r} in {field}")
            index = (number,)
        if col is not None:
            if values.ndim < 2 or int(col) >= values.shape[1]:
                raise ValueError(f"{where}: bias field {address!r}: {field} has no column {col}")
            index = (*index, int(col))
        self.field, self.index = field, index
        addressed = np.asarray(values[index])
        if addressed.size == 0:
            raise ValueError(f"{where}: bias field {address!r} addresses no values")
        if not np.all(addressed == addressed.flat[0]):
            raise ValueError(
                f"{where}: bias field {address!r} addresses values that differ ({addressed.ravel()}): "
                "address one of them"
            )

    def check_range(self, address: str, low: float, high: float, where: str) -> None:
        """One ValueError when U[low, high] reaches values this field cannot physically take."""
        if self.field in POSITIVE_FIELDS and low <= 0:
            raise ValueError(f"{where}: {address} from {low:g}: a {self.field} must be > 0; give a range above 0")
        if self.field in NONNEGATIVE_FIELDS and low < 0:
            raise ValueError(f"{where}: {address} from {low:g}: a {self.field} must be >= 0; give a range from 0 up")

    def read(self, model) -> float:
        return float(np.asarray(getattr(model, self.field)[self.index]).flat[0])

    def write_batch(self, values, draws) -> None:
        """values: the field for n worlds (n, *field shape); draws (n,): world i's value, in place."""
        addressed = values[(slice(None), *self.index)]
        addressed[...] = draws.reshape(draws.shape + (1,) * (addressed.ndim - 1))

    def write(self, model, value: float) -> None:
        """One model's addressed values set to value."""
        getattr(model, self.field)[self.index] = value


def parse_randomise(items: list[str]) -> list[tuple[str, float, float]]:
    """["body_mass[ball]=0.0087:0.87", ...] (a command line's) -> [(address, low, high)]; one ValueError if bad."""
    ranges = []
    for item in items:
        address, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        try:
            ranges.append((address.strip(), float(low), float(high)))
        except ValueError:
            raise ValueError(f"randomise {item!r}: write FIELD=LOW:HIGH, e.g. body_mass[ball]=0.0087:0.87") from None
        if not (address.strip() and np.isfinite(ranges[-1][1:]).all() and ranges[-1][1] <= ranges[-1][2]):
            raise ValueError(f"randomise {item!r}: write FIELD=LOW:HIGH with finite LOW <= HIGH")
    return ranges


def plant_draw(ranges: list[tuple[str, float, float]], seed: int, episode: int) -> dict[str, float]:
    """A domain-randomised plant's parameters for one episode, {address: value}: U[low, high] each, seeded by
    (seed, episode) on a stream of its own (the episode's start uses (seed, episode)), so the host can say what
    the plant was."""
    rng = np.random.default_rng([seed, episode, 1])
    low, high = np.array([r[1] for r in ranges]), np.array([r[2] for r in ranges])
    values = low + (high - low) * rng.random(len(ranges))
    return dict(zip([r[0] for r in ranges], values.tolist(), strict=True))


class TaskModel:
    """A task's MjModel and what its MJCF says about the task (the numbers in the module docstring)."""

    def __init__(
        self, xml_path: str | Path, control_period: float | None = None, mass_scale: dict[str, float] | None = None
    ):
        """control_period overrides the XML's (benchmarks of fast loops); physics then steps at most that long.
        mass_scale: {body name: factor} makes those bodies heavier or lighter than the MJCF says (a plant off
        its nominal model, for robustness runs): mass and inertia scale together, the shape stays."""
        self.xml_path = Path(xml_path)
        try:
            self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        except ValueError as e:  # MuJoCo's compiler error, its lines joined: the problem, then its element and line
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            raise ValueError(f"{xml_path}: {'; '.join(lines).replace(':; ', ': ')}") from None
        model = self.model
        for body, factor in (mass_scale or {}).items():
            number = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
            if number < 0:
                names = ", ".join(model.body(i).name for i in range(1, model.nbody))
                raise ValueError(f"mass scale: {xml_path} has no body {body!r}: its bodies are {names}")
            if not (isinstance(factor, int | float) and 0 < factor < float("inf")):
                raise ValueError(f"mass scale: body {body!r} factor {factor!r}: use a positive number")
            model.body_mass[number] *= factor
            model.body_inertia[number] *= factor
        if mass_scale:  # what the compiler derives from the masses (inverse weights, subtree masses)
            mujoco.mj_setConst(model, mujoco.MjData(model))
        period = self.numeric("control_period", required=True)
        self.control_period = period = float(period[0]) if control_period is None else control_period
        if model.opt.timestep > period:
            model.opt.timestep = period
        self.substeps = round(period / model.opt.timestep)
        if self.substeps < 1 or abs(self.substeps * model.opt.timestep - period) > 1e-9:
            raise ValueError(f"{xml_path}: control_period {period} is not a multiple of timestep")
        qvel_max = self.numeric("qvel_max")
        self.qvel_max = None if qvel_max is None else float(qvel_max[0])
        if self.qvel_max is not None and model.nq != model.nv:
            raise ValueError(f"{xml_path}: qvel_max needs nq == nv (hinge and slide joints only)")
        self.ctrl_low = model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = model.actuator_ctrlrange[:, 1].copy()
        self.state_dim = state_size(model)
        self.time_slice, self.qpos_slice, self.qvel_slice = state_layout(model)
        self.reset_low, self.reset_high = self.numeric("reset_low"), self.numeric("reset_high")
        for name, box in (("reset_low", self.reset_low), ("reset_high", self.reset_high)):
            if box is not None and box.shape != (model.nq + model.nv,):
                raise ValueError(f"{xml_path}: {name} has {box.size} values, qpos and qvel have {model.nq + model.nv}")
        if self.reset_low is not None and self.reset_high is not None:
            self.check_start_box()
        seconds = self.numeric("episode_seconds")
        self.episode_steps = None if seconds is None else max(1, round(float(seconds[0]) / period))

    def __getstate__(self) -> dict:
        """A pickled copy (to a worker process) leaves behind what belongs to this process: renderer, scratch data."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_renderer", "_render_data", "_sensor_scratch")}

    def check_start_box(self) -> None:
        """Every start the box can give is one the plant takes (`invalid_state`): refused here, at load, naming
        the joint, rather than as a reset the plant denies in some episodes."""
        model, low, high = self.model, self.reset_low, self.reset_high
        if np.any(low > high):
            i = int(np.argmax(low > high))
            raise ValueError(
                f"{self.xml_path}: reset_low is above reset_high at value {i} ({low[i]:g} > {high[i]:g}): "
                "give the lower bound first"
            )
        for name, corner in (("reset_low", low), ("reset_high", high)):  # each check is per value: the corners
            qpos, qvel = corner[: model.nq], corner[model.nq :]
            if (out := self.out_of_range(qpos)) is not None:
                j, q, lo, hi = out
                hinge = int(model.jnt_type[j]) == int(mujoco.mjtJoint.mjJNT_HINGE)
                raise ValueError(
                    f"{self.xml_path}: {name} gives joint {model.joint(j).name or j!r} {q:g}, outside its range "
                    f"[{lo:.4g}, {hi:.4g}]: narrow reset_low/reset_high"
                    + (" (a hinge's range is in degrees unless <compiler angle='radian'/>)" if hinge else "")
                )
            if (why := self.invalid_state(self.full_state(qpos, qvel))) is not None:
                raise ValueError(f"{self.xml_path}: {name} gives a start the plant refuses ({why}): narrow it")

    def out_of_range(self, qpos) -> tuple[int, float, float, float] | None:
        """The first limited hinge or slide joint outside its range at qpos: (joint, value, low, high), or None.
        A ball joint's limit is a cone angle, not one qpos value: the plant does not check it at a reset."""
        hinge, slide = int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)
        for j in range(self.model.njnt):
            if self.model.jnt_limited[j] and int(self.model.jnt_type[j]) in (hinge, slide):
                lo, hi = self.model.jnt_range[j]
                q = float(qpos[self.model.jnt_qposadr[j]])
                if not lo <= q <= hi:
                    return j, q, lo, hi
        return None

    def invalid_state(self, state) -> str | None:
        """Why `state` cannot be a start state of this plant (wrong size, non-finite, out of its limits)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            return f"{state.size} values for a state of {self.state_dim}"
        if not np.all(np.isfinite(state)):
            return "non-finite values"
        qpos, qvel = state[self.qpos_slice], state[self.qvel_slice]
        if self.qvel_max is not None and np.any(np.abs(qvel) > self.qvel_max):
            return f"a joint speed beyond {self.qvel_max}"
        if (out := self.out_of_range(qpos)) is not None:
            j, q, lo, hi = out
            return f"joint {self.model.joint(j).name or j!r} at {q:.3g}, outside its range [{lo:.4g}, {hi:.4g}]"
        if np.any(np.abs(state[1:]) > 1e3):  # time, state[0], may pass 1e3 s
            return "values beyond 1e3"
        return None

    def render(self, state, width: int = 320, height: int = 240, camera: str | None = None) -> np.ndarray:
        """An RGB image (height, width, 3) of the model in `state`: from the MJCF's camera `camera`, else its
        first camera, else from the side (the tasks move in the x-z plane), framing the whole model."""
        renderer = getattr(self, "_renderer", None)  # made at the first frame: most models never draw one
        if renderer is None or (renderer.width, renderer.height) != (width, height):
            # Shadows from a map of at most SHADOW_MAP texels a side, not MuJoCo's default 4096: drawn in software
            # (Mesa on a headless machine) that map took 45 of a 480x360 frame's 50 ms, and looks the same at these
            # sizes. The MJCF's own setting is put back: the context has read it.
            quality = self.model.vis.quality
            kept, quality.shadowsize = quality.shadowsize, min(quality.shadowsize, SHADOW_MAP)
            try:
                self._renderer = renderer = mujoco.Renderer(self.model, height, width)
            finally:
                quality.shadowsize = kept
            self._render_data = mujoco.MjData(self.model)
        data = self._render_data
        mujoco.mj_setState(self.model, data, np.asarray(state, dtype=np.float64), STATE_SPEC)
        mujoco.mj_forward(self.model, data)
        if camera is not None or self.model.ncam > 0:
            view = camera if camera is not None else 0
        else:
            view = mujoco.MjvCamera()
            view.lookat[:] = self.model.stat.center
            view.distance, view.azimuth, view.elevation = 1.4 * self.model.stat.extent, 90.0, -10.0
        renderer.update_scene(data, camera=view)
        return renderer.render()

    def sensor(self, name: str) -> slice:
        """Where the MJCF's sensor `name` sits in a row of `sensordata`."""
        number = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SENSOR, name)
        if number < 0:
            names = [self.model.sensor(i).name for i in range(self.model.nsensor)]
            have = f"its sensors are {', '.join(repr(n) for n in names)}" if names else "it has no <sensor>"
            raise ValueError(f"{self.xml_path} has no sensor {name!r}: {have}")
        start = int(self.model.sensor_adr[number])
        return slice(start, start + int(self.model.sensor_dim[number]))

    @functools.cached_property
    def frame_sensors_only(self) -> bool:
        """Whether the MJCF has sensors and each reads only where frames, joints and tendons are and how fast they
        move (KINEMATIC_SENSORS: no masses, energies, forces, accelerations or actuator gears): then a model whose
        draw moves no frame gives the same values as this one, and a planner that steps MuJoCo may hand over the
        sensors it computed on the way (Task.remember_sensordata)."""
        kinematic = {int(getattr(mujoco.mjtSensor, f"mjSENS_{name}")) for name in KINEMATIC_SENSORS}
        return self.model.nsensor > 0 and all(int(kind) in kinematic for kind in self.model.sensor_type)

    def sensordata(self, states, controls=None) -> np.ndarray:
        """Every sensor of the MJCF at each full physics state: (n, nsensordata) for states (n, nstate).

        What MuJoCo's forward pass computes at that state (mj_forward's sensordata), for many states at once:
        `mujoco.rollout` of one step from each, in C, recording the sensors of the pass that starts the step
        (on a copy of the model with Euler integration, the cheapest step: only its forward pass is used).
        Sensors of the acceleration stage (touch, accelerometer, actuator forces) see `controls` (n, nu), else zero
        controls. A state with a non-finite or huge value (a diverged rollout) gets NaN sensors: MuJoCo would
        reset it and give the rest pose's, and a diverged rollout must not be costed as if it were at rest."""
        states = np.ascontiguousarray(states, dtype=np.float64)
        n, nu = states.shape[0], self.model.nu
        controls = np.zeros((n, nu)) if controls is None else np.asarray(controls, np.float64).reshape(n, nu)
        out = np.full((n, self.model.nsensordata), np.nan)
        sound = sound_states(states)
        if sound.any():
            out[sound] = self._forward_sensors(states[sound], controls[sound])
        return out

    def _forward_sensors(self, states: np.ndarray, controls: np.ndarray) -> np.ndarray:
        local = self.__dict__.setdefault("_sensor_scratch", threading.local())  # MjData is not for two threads
        if not hasattr(local, "data"):
            model = copy.copy(self.model)
            model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
            local.model, local.data = model, mujoco.MjData(model)
        n = states.shape[0]
        out = np.empty((n, 1, self.model.nsensordata))
        mj_rollout.rollout(
            local.model,
            local.data,
            np.ascontiguousarray(states),
            np.ascontiguousarray(controls.reshape(n, 1, self.model.nu)),
            control_spec=int(mujoco.mjtState.mjSTATE_CTRL),
            nstep=1,
            state=np.empty((n, 1, self.state_dim)),
            sensordata=out,
        )
        return out[:, 0]

    def numeric(self, name: str, required: bool = False) -> np.ndarray | None:
        value = custom_numeric(self.model, name)
        if value is None and required:
            raise ValueError(f"{self.xml_path}: missing <custom><numeric name='{name}' .../>")
        return value

    def full_state(self, qpos, qvel) -> np.ndarray:
        """The full physics state with this qpos and qvel, time 0 and everything else at MuJoCo's default."""
        data = mujoco.MjData(self.model)
        data.qpos[:], data.qvel[:] = qpos, qvel
        state = np.empty(self.state_dim)
        mujoco.mj_getState(self.model, data, state, STATE_SPEC)
        return state

    def contacts(self, qpos) -> int:
        """How many contacts MuJoCo finds at this pose (a start drawn inside a wall has some)."""
        data = mujoco.MjData(self.model)
        data.qpos[:] = qpos
        mujoco.mj_forward(self.model, data)
        return int(data.ncon)

    def keyframe_state(self, name: str) -> np.ndarray | None:
        """The full state of the MJCF's <key name=...>, or None where it has no such key."""
        key = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_KEY, name)
        if key < 0:
            return None
        return self.full_state(self.model.key_qpos[key], self.model.key_qvel[key])

    def seeded_start(self, seed: int) -> np.ndarray | None:
        """The firmware's own random start: qpos, qvel uniform in the reset box (None without a box)."""
        if self.reset_low is None or self.reset_high is None:
            return None
        box = np.random.default_rng(seed).uniform(self.reset_low, self.reset_high)
        return self.full_state(box[: self.model.nq], box[self.model.nq :])


class MujocoPlant(TaskModel):
    """The TRUE plant: one MjModel and its MjData, stepped one control period at a time."""

    def __init__(
        self, xml_path: str | Path, control_period: float | None = None, mass_scale: dict[str, float] | None = None
    ):
        super().__init__(xml_path, control_period, mass_scale)
        self.data = mujoco.MjData(self.model)
        self.ranges: list[tuple[str, float, float]] = []  # domain randomisation (randomise): none
        self.randomise_seed = 0
        self._writers: dict[str, FieldWriter] = {}

    @classmethod
    def for_task(cls, task: str, models_dir: Path = MODELS_DIR) -> MujocoPlant:
        return cls(model_xml(task, models_dir))

    def randomise(self, ranges: list[tuple[str, float, float]], seed: int) -> None:
        """Domain randomisation: each episode's plant drawn from these ranges (draw_for), seeded by (seed, episode)."""
        self._writers = {address: FieldWriter(self.model, address, "randomise") for address, _, _ in ranges}
        for address, low, high in ranges:
            self._writers[address].check_range(address, low, high, "randomise")
        self.ranges, self.randomise_seed = ranges, seed

    def draw_for(self, episode: int) -> dict[str, float]:
        """Write this episode's drawn parameters into the plant, and what MuJoCo's compiler derives from them."""
        drawn = plant_draw(self.ranges, self.randomise_seed, episode)
        for address, value in drawn.items():
            self._writers[address].write(self.model, value)
        mujoco.mj_setConst(self.model, self.data)
        return drawn

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
        state = np.empty(self.state_dim)
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def reset(self, state) -> np.ndarray:
        mujoco.mj_resetData(self.model, self.data)
        mujoco.mj_setState(self.model, self.data, np.asarray(state, dtype=np.float64), STATE_SPEC)
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
        """limit_speed for one state, in plain Python: a few joints, and numpy's call overhead would dominate."""
        qpos, qvel, limit = self.data.qpos, self.data.qvel, self.qvel_max
        for i in range(qvel.shape[0]):
            v = qvel[i]
            if v > limit or v < -limit:
                limited = limit if v > 0 else -limit
                qpos[i] += self.model.opt.timestep * (limited - v)
                qvel[i] = limited
