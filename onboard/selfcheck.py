"""`python -m onboard selfcheck`: the robot's whole path checked before it moves anything.

The model's checks and its trained settings, the backend built and a warm plan timed, the GPU's graph
replay, the realtime priority, the loop's CPUs, the log folder, the signing key, and (unless offline) the
plant's handshake. Deploy runs it offline on a staged release while the running service holds the port."""

from __future__ import annotations

import os

from onboard.mppi import MPPI, MPPIConfig
from onboard.plant_port import open_plant
from onboard.profile import RobotProfile
from onboard.qfunction import OnnxQ, trained_settings_mismatch
from onboard.recorder import check_log_folder
from onboard.scheduling import loop_cpus, realtime_priority, realtime_refusal, realtime_refused
from onboard.tasks import get_task


def selfcheck(profile: RobotProfile, link: bool = True) -> list[str]:
    """Check the model, the backend and (unless link=False) the plant link; report lines, raises on a failure."""
    task = get_task(profile.task, profile.standin.mass_scale)
    lines = [f"robot {profile.name}: task {task.name}, backend {profile.backend}, mode {profile.mode}"]
    q = None
    if profile.model:
        q = OnnxQ(profile.model_path, task, threads=profile.threads)
        lines.append(f"model {profile.model_path}: sha256 {q.sha256}, manifest and probe OK")
    else:
        lines.append("model: none (plain MPPI)")
    config = MPPIConfig.for_task(task, **profile.mppi)
    if q is not None:
        mismatch = trained_settings_mismatch(q, config)
        lines.append(f"warning: {mismatch}" if mismatch else "model's MPPI settings: the ones this profile plans with")
    lines += _planner_lines(profile, task, config, q)
    priority = realtime_priority(profile)
    if priority:
        refusal = realtime_refusal(priority)
        lines.append(
            f"realtime priority {priority} (SCHED_FIFO): permitted"
            if refusal is None
            else f"warning: {realtime_refused(priority, refusal)}"
        )
    with loop_cpus(profile.cpus):  # a CPU the machine lacks refused here, not when the service starts
        if profile.cpus:
            lines.append(f"cpus {profile.cpus}: the loop can be pinned there")
    check_log_folder(profile.log_path / profile.name)
    lines.append(f"log folder {profile.log_path / profile.name}: writable")
    signing_key = profile.signing_key()  # read now: a missing key must not wait for the service's start
    if signing_key is not None:
        lines.append(f"signing key {profile.path(profile.signing_key_file)}: read")
    if link:
        with open_plant(profile, task, signing_key) as plant:
            h = plant.plant_handshake
            lines.append(
                f"plant on {plant.url}: handshake OK (dialect v{h.dialect_version}, task {task.name}, "
                f"dims {h.state_dim}/{h.act_dim}, period {h.control_period_us / 1000:.1f} ms)"
            )
    else:
        lines.append("plant link: not checked (--offline)")
    lines.append(f"pid {os.getpid()}: selfcheck passed")
    return lines


def _planner_lines(profile: RobotProfile, task, config: MPPIConfig, q) -> list[str]:
    """The planner built as `run` builds it (backend, Q, memory) and a warm plan timed; on the GPU, how it replays."""
    planner = MPPI(task, config, profile.backend, q=q, threads=profile.threads)
    planner.warm_up(task.hanging_state()[None])
    plan = planner.plan(task.hanging_state()[None])
    lines = [
        f"backend {profile.backend}: built and loaded; a warm plan (K={config.K}, H={config.H}, "
        f"{config.n_iters} iterations) in {plan.seconds * 1e3:.1f} ms"
    ]
    if hasattr(planner.backend, "replays_graphs"):  # the GPU
        if not planner.backend.replays_graphs:
            lines.append("warning: plans run kernel by kernel, not as CUDA graphs: each step costs more")
        elif planner.backend.replay_steps == 1:
            lines.append("plans replayed as CUDA graphs: one launch per control step")
        else:
            lines.append(
                f"plans replayed as CUDA graphs, the Q's runs between them ({planner.backend.replay_steps} "
                "parts per control step)"
            )
    if hasattr(planner.q, "provider"):
        lines.append(f"Q on the GPU through ONNX Runtime's {planner.q.provider}")
    return lines
