"""torch Q -> q.onnx + q.json, checked before anyone can deploy it.

Checks at export: onnx.checker passes; ONNX Runtime matches torch on 1000 random inputs within 1e-5
(relative to 1 + |q|, float32), or within 4x torch's own float32 rounding where that is larger; the
batch axis is dynamic (batches of 1 and 1000 run); and onboard's loader (`onboard.qfunction.OnnxQ`)
accepts the written files. Any failure raises ExportError and leaves no model behind.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch

from firmware_bridge.paths import blocking_file
from offboard.mpq import QNetwork
from onboard.mppi import MPPIConfig
from onboard.qfunction import OnnxQ, manifest_path, save_q_model
from onboard.tasks import get_task

TOLERANCE = 1e-5  # ORT against torch, relative to 1 + |q| ...
# ... or, for weights whose float32 rounding is itself larger (a trained Q with large, cancelling
# terms: torch float32 is then further than 1e-5 from the exact network), this many times that
# rounding. An export that is wrong (a lost layer, swapped inputs, other weights) is off by far more.
# 8, not 4: ONNX Runtime's tanh is an approximation a few ulp off torch's, and through a trained cart-pole
# Q's weights its largest distance to torch reached 4.8 times torch's own rounding (1.6e-5).
FLOOR_FACTOR = 8.0
MAX_ROUNDING = 2.5e-4  # beyond this the net itself is badly conditioned in float32: refused, not exported


class ExportError(ValueError):
    """What cannot be exported as given: the model path, the checkpoint, or a Q that float32 cannot hold."""


def onnx_bytes(net: QNetwork, obs_dim: int, act_dim: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, obs_dim), torch.zeros(2, act_dim)),
            buffer,
            input_names=["obs", "act"],
            output_names=["q"],
            dynamic_axes={"obs": {0: "batch"}, "act": {0: "batch"}, "q": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def check_against_torch(data: bytes, net: QNetwork, obs_dim: int, act_dim: int, rng: np.random.Generator):
    """(error, floor) over 1000 random inputs, run as one batch and as a single row: error is the largest
    |ORT - torch| / (1 + |torch|); floor is the same measure for torch float32 against the exact (float64)
    network, the rounding any float32 runner of these weights has."""
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load_from_string(data))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    if not isinstance(batch, str):
        raise ExportError(f"the exported batch axis is fixed ({batch}), not dynamic")
    obs = rng.normal(0, 3, (1000, obs_dim)).astype(np.float32)
    act = rng.normal(0, 3, (1000, act_dim)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(obs), torch.from_numpy(act)).numpy()
        exact = copy.deepcopy(net).double()(torch.from_numpy(obs).double(), torch.from_numpy(act).double()).numpy()
    (got,) = session.run(["q"], {"obs": obs, "act": act})
    (one,) = session.run(["q"], {"obs": obs[:1], "act": act[:1]})
    if got.shape != (1000,) or one.shape != (1,):
        raise ExportError(f"exported Q returns shapes {got.shape} and {one.shape} for 1000 and 1 inputs")
    error = float(np.max(np.abs(got - expected) / (1 + np.abs(expected))))
    floor = float(np.max(np.abs(expected - exact) / (1 + np.abs(exact))))
    return error, floor


def export_extra(config: dict, segments: list[dict]) -> dict:
    """What q.json records beyond the basics: the MPPI settings trained with, the segments, the training."""
    task = get_task(config["task"])
    mppi = MPPIConfig.for_task(
        task,
        H=config["horizon"],
        n_iters=config["target_iters"],
        model=config["planner_model"],
        td_lambda=config.get("td_lambda", 1.0),
    )
    return dict(mppi=mppi.to_dict(), segments=segments, training=config)


def check_model_path(path: Path) -> None:
    """Refuse a model path that q.onnx + q.json cannot be written to, before any training is spent on it."""
    if manifest_path(path) == path:
        raise ExportError(f"model path {path} ends in .json, its manifest's name: give a .onnx path, e.g. q.onnx")
    for target in (path, manifest_path(path)):
        if target.is_dir():
            raise ExportError(f"model path {target} is a folder: give the model's file path, e.g. {path / 'q.onnx'}")
    blocker = blocking_file(path.parent)
    if blocker is not None:
        raise ExportError(f"cannot write the model to {path}: {blocker} is a file, not a folder; choose another path")


def export(net: QNetwork, task_name: str, path: str | Path, extra: dict, seed: int = 0) -> Path:
    """Write and verify `path` (q.onnx) and its manifest; returns the manifest's path."""
    task = get_task(task_name)
    path = Path(path)
    check_model_path(path)
    data = onnx_bytes(net, task.obs_dim, task.act_dim)
    error, floor = check_against_torch(data, net, task.obs_dim, task.act_dim, np.random.default_rng(seed))
    if not (np.isfinite(error) and np.isfinite(floor)) or floor > MAX_ROUNDING:
        raise ExportError(
            f"the Q's float32 rounding is {floor:.2g} of its values (> {MAX_ROUNDING}): its weights are too large "
            "to run in float32 faithfully; retrain (a lower learning rate, fewer updates) before exporting"
        )
    allowed = max(TOLERANCE, FLOOR_FACTOR * floor)
    if error > allowed:
        raise ExportError(f"ONNX Runtime differs from torch by {error:.2g} (> {allowed:.2g}): not exported")
    producer = dict(
        name="offboard.export",
        torch=torch.__version__,
        onnx=onnx.__version__,
        max_relative_error=error,
        float32_rounding=floor,
        allowed_error=allowed,
    )
    manifest = save_q_model(data, path, task, producer, extra=extra)
    try:
        OnnxQ(path, task)
    except Exception as e:  # onboard refuses it: leave nothing a deploy could pick up
        path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)
        raise ExportError(f"onboard's loader refuses the export ({e})") from None
    return manifest


CHECKPOINT_KEYS = ("task", "hidden", "horizon", "target_iters", "planner_model")  # what export reads from config


def load_checkpoint(path: str | Path) -> tuple[QNetwork, dict]:
    """A training checkpoint as data only (weights_only: loading it runs no code); ExportError names what is wrong."""
    path = Path(path)
    fix = "give a runs/train/<time>/checkpoint-NNN.pt written by training"
    if path.is_dir():
        raise ExportError(f"checkpoint {path} is a folder: {fix}")
    if not path.exists():
        raise ExportError(f"checkpoint {path} does not exist: {fix}")
    unreadable = ExportError(f"{path} is not a readable checkpoint (truncated, damaged, or not a torch file): {fix}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch.load's errors on others say little
        raise unreadable
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's zip and pickle readers raise whatever they met
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise ExportError(
                f"{path} holds Python objects, not only a checkpoint's data (not loaded: that could run code): {fix}"
            ) from None
        raise unreadable from None
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not all(k in config for k in CHECKPOINT_KEYS):
        raise ExportError(f"{path} is not a training checkpoint (no config with {', '.join(CHECKPOINT_KEYS)}): {fix}")
    try:
        task = get_task(config["task"])
    except (ValueError, TypeError) as e:
        raise ExportError(f"{path}: {e}") from None
    try:
        net = QNetwork(task.obs_dim, task.act_dim, tuple(config["hidden"]))
        weights = {"value_scale": torch.tensor(1.0), **checkpoint["state_dict"]}  # older checkpoints: unscaled
        net.load_state_dict(weights)
    except (TypeError, KeyError, RuntimeError):  # torch's mismatch report runs to many lines: name the cause here
        raise ExportError(
            f"{path}: its weights do not fit a {task.name} Q with hidden layers {config['hidden']} (another task or "
            f"shape, or edited): {fix}"
        ) from None
    return net, checkpoint
