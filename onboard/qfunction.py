"""The learned soft Q-function on the robot: `q.onnx` run by ONNX Runtime, guarded by its `q.json`.

The manifest (format below) is written by `save_q_model` on the workstation and checked by
`OnnxQ` before anything runs: the file's sha256, the task and its dimensions, the graph's input
and output names and shapes, and a probe batch that must come back finite. Each refusal is one
line naming the problem and the fix (`ModelError`).

q.json: {"format": "mpq-q/1", "task", "obs_dim", "act_dim", "inputs": {"obs", "act"}, "output",
"onnx_sha256", "producer": {...}, ...whatever else the producer records (training settings)}.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from onboard.fileio import write_atomic
from onboard.mppi import RENAMED
from onboard.tasks.base import Task

MANIFEST_FORMAT = "mpq-q/1"
REQUIRED_KEYS = ("format", "task", "obs_dim", "act_dim", "inputs", "output", "onnx_sha256", "producer")


class ModelError(ValueError):
    """A Q model that must not be used; the message says why and what to do."""


def manifest_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def save_q_model(
    onnx_bytes: bytes,
    onnx_path: str | Path,
    task: Task,
    producer: dict,
    obs_input: str = "obs",
    act_input: str = "act",
    output: str = "q",
    extra: dict | None = None,
) -> Path:
    """Write q.onnx and then its q.json (each atomically); returns the manifest's path."""
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(onnx_path, onnx_bytes)
    manifest = {
        "format": MANIFEST_FORMAT,
        "task": task.name,
        "obs_dim": task.obs_dim,
        "act_dim": task.act_dim,
        "inputs": {"obs": obs_input, "act": act_input},
        "output": output,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "producer": producer,
        **(extra or {}),
    }
    path = manifest_path(onnx_path)
    write_atomic(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


# The manifest's fields and the JSON types they must have.
MANIFEST_FIELDS = {
    "format": str,
    "task": str,
    "obs_dim": int,
    "act_dim": int,
    "inputs": dict,
    "output": str,
    "onnx_sha256": str,
    "producer": dict,
}
PROBE_ROWS = 5


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else error.__class__.__name__


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        fix = "export one (offboard) or fix the model path" if what == "model file" else "export the model again"
        raise ModelError(f"missing {what} {path}: {fix}") from None
    except OSError as e:
        raise ModelError(f"cannot read {what} {path} ({e.strerror}): check the file and its permissions") from None


def load_verified(onnx_path: str | Path) -> tuple[dict, bytes]:
    """The manifest and the ONNX bytes, read once, the bytes checked against the manifest's sha256.

    Whatever runs the model runs these very bytes, so a file swapped after the check is never run.
    """
    onnx_path = Path(onnx_path)
    onnx_bytes = _read_bytes(onnx_path, "model file")
    mpath = manifest_path(onnx_path)
    try:
        manifest = json.loads(_read_bytes(mpath, "manifest"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"unreadable manifest {mpath} ({e.__class__.__name__}): export the model again") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"manifest {mpath} is not a JSON object: export the model again")
    wrong = [
        f"{key} (want {kind.__name__})"
        for key, kind in MANIFEST_FIELDS.items()
        if not isinstance(manifest.get(key), kind) or (kind is int and isinstance(manifest.get(key), bool))
    ]
    inputs = manifest.get("inputs")
    if isinstance(inputs, dict) and not all(isinstance(inputs.get(k), str) for k in ("obs", "act")):
        wrong.append("inputs.obs and inputs.act (want names)")
    if wrong:
        raise ModelError(f"manifest {mpath} lacks or mistypes {', '.join(wrong)}: export the model again")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ModelError(
            f"manifest {mpath} has format {manifest['format']!r}, this onboard reads {MANIFEST_FORMAT!r}: "
            "export the model with a matching offboard, or deploy a matching onboard"
        )
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if actual != manifest["onnx_sha256"]:
        raise ModelError(
            f"{onnx_path} has sha256 {actual[:12]}... but its manifest says {manifest['onnx_sha256'][:12]}...: "
            "the file changed after export; export or deploy it again"
        )
    return manifest, onnx_bytes


def read_manifest(onnx_path: str | Path) -> dict:
    """The verified manifest of q.onnx (file present, sha256 matches); raises ModelError otherwise."""
    return load_verified(onnx_path)[0]


def _is_dynamic(dim) -> bool:
    return dim is None or isinstance(dim, str)


class OnnxQ:
    """Q(obs[N, obs_dim], act[N, act_dim]) -> q[N] (float64) through ONNX Runtime on the CPU."""

    def __init__(self, onnx_path: str | Path, task: Task, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if self.path.suffix == ".json":
            raise ModelError(f"{self.path} is the model's manifest: give the q.onnx beside it")
        self.manifest, onnx_bytes = load_verified(self.path)
        self.model_bytes = onnx_bytes  # the verified bytes: a GPU session is built from these, not a re-read
        m = self.manifest
        if m["task"] != task.name:
            raise ModelError(
                f"{self.path} was trained for task {m['task']!r}, not {task.name!r}: use that task's model"
            )
        if (m["obs_dim"], m["act_dim"]) != (task.obs_dim, task.act_dim):
            raise ModelError(
                f"{self.path} expects obs_dim={m['obs_dim']}, act_dim={m['act_dim']} but task {task.name!r} has "
                f"obs_dim={task.obs_dim}, act_dim={task.act_dim} now: train a Q for the task as it is"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Worker threads that spin after each run steal the core the plant link and the stand-in need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for malformed graphs
            raise ModelError(f"{self.path} does not load in ONNX Runtime ({_first_line(e)}): export it again") from None
        self.obs_name, self.act_name, self.out_name = m["inputs"]["obs"], m["inputs"]["act"], m["output"]
        self._check_signature(task)
        self._probe(task)

    def _check_signature(self, task: Task) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = {self.obs_name: task.obs_dim, self.act_name: task.act_dim}
        if set(inputs) != set(expected):
            raise ModelError(
                f"{self.path} has inputs {sorted(inputs)} but its manifest names {sorted(expected)}: export it again"
            )
        for name, width in expected.items():
            shape = inputs[name].shape
            if len(shape) != 2 or shape[1] != width or not _is_dynamic(shape[0]):
                raise ModelError(
                    f"{self.path} input {name!r} has shape {shape}, expected [batch, {width}] with a dynamic "
                    "batch axis: export it again"
                )
            if inputs[name].type != "tensor(float)":
                raise ModelError(
                    f"{self.path} input {name!r} is {inputs[name].type}, expected tensor(float) (float32): "
                    "export it again in float32"
                )
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.out_name not in outputs:
            raise ModelError(
                f"{self.path} has outputs {sorted(outputs)}, not {self.out_name!r} as its manifest says: "
                "export it again"
            )

    def _probe(self, task: Task) -> None:
        """Run a probe batch, and its rows one at a time: finite, one value per row, rows independent."""
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((PROBE_ROWS, task.obs_dim))
        act = rng.uniform(task.u_min, task.u_max, size=(PROBE_ROWS, task.act_dim))
        try:
            q = self(obs, act)
            rows = np.concatenate([self(obs[i : i + 1], act[i : i + 1]) for i in range(PROBE_ROWS)])
        except Exception as e:
            raise ModelError(f"{self.path} failed on a probe batch ({_first_line(e)}): export it again") from None
        if q.shape != (PROBE_ROWS,) or rows.shape != (PROBE_ROWS,):
            raise ModelError(
                f"{self.path} returns shape {q.shape} for {PROBE_ROWS} inputs, expected one value per row: "
                "export a model whose output is [batch] or [batch, 1]"
            )
        if not np.all(np.isfinite(q)):
            bad = next(v for v in q if not math.isfinite(v))
            raise ModelError(
                f"{self.path} returns non-finite Q ({bad}) on a probe batch: its weights are broken; "
                "retrain or export an earlier checkpoint"
            )
        if not np.allclose(q, rows, rtol=1e-4, atol=1e-4):
            raise ModelError(
                f"{self.path} gives different Q for a row alone and in a batch: the graph mixes rows; "
                "export a per-row network"
            )

    @property
    def sha256(self) -> str:
        return self.manifest["onnx_sha256"]

    def __call__(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        feeds = {
            self.obs_name: np.ascontiguousarray(obs, dtype=np.float32),
            self.act_name: np.ascontiguousarray(act, dtype=np.float32),
        }
        (q,) = self.session.run([self.out_name], feeds)
        return q.reshape(-1).astype(np.float64)


# What a Q's values depend on: the MPPI it was trained with.
TRAINED_SETTINGS = ("K", "H", "n_iters", "sigma", "temperature", "alpha", "gamma", "td_lambda", "noise_filter")


def trained_settings_mismatch(q: OnnxQ, config) -> str | None:
    """A Q's values are the free energy of the MPPI it was trained with (q.json's "mppi"); planning with
    other settings gives the terminal value a meaning it was not trained for. One line, or None."""
    trained = q.manifest.get("mppi")
    if not isinstance(trained, dict):  # a model from elsewhere may not record them
        return None
    trained = {RENAMED.get(key, key): value for key, value in trained.items()}  # older q.json: the old names
    acting = config.to_dict()

    def same(a, b) -> bool:
        try:
            return bool(np.allclose(np.asarray(a, float), np.asarray(b, float)))
        except (TypeError, ValueError):  # not numbers, or shapes that do not broadcast
            return False

    def fits(key) -> bool:
        """More iterations than trained optimise the same objective further (the ball-in-cup's Q is trained with
        one and acts with three); fewer leave K rollouts weighted mostly by their model draws."""
        if key == "n_iters" and isinstance(trained[key], int) and isinstance(acting[key], int):
            return acting[key] >= trained[key]
        return same(acting[key], trained[key])

    differ = [
        f"{key}={acting[key]!r} (trained with {trained[key]!r})"
        for key in TRAINED_SETTINGS
        if key in trained and not fits(key)
    ]
    if not differ:
        return None
    return (
        f"{q.path} was trained for other MPPI settings than it plans with here: {', '.join(differ)}; "
        "set them in the profile's [mppi] (or the command's options) or retrain"
    )
