"""`python -m offboard evaluate`: a Q (or plain MPPI) on the real path from seeded starts, with its interval.

Every episode goes through the onboard loop and the serial link to the firmware stand-in (MuJoCo, the
TRUE plant, optionally made heavier with --mass-scale), and its cost is read back from the verified
segment it logged. The starts are the task's start distribution seeded by (--seed, episode) or its fixed
hanging start; the planner's noise is seeded by --seed too. Writes <out>/<time>/evaluation.json with the
per-episode costs, their mean and its 95 % t-interval, and every setting; prints one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

from firmware_bridge.paths import blocking_file
from firmware_bridge.plant import parse_mass_scale
from offboard.cli import add_options, given
from offboard.stats import format_stat, mean_interval
from onboard.backends import cpu_backend_for
from onboard.fileio import new_run_dir
from onboard.loop import run
from onboard.mppi import MPPIConfig
from onboard.profile import load_profile
from onboard.qfunction import OnnxQ
from onboard.recorder import read_manifest, read_segment, verified_segments
from onboard.tasks import get_task
from onboard.tasks.base import Task

FINAL_EVAL_SEED = 20_000  # the final evaluations' starts: seeds no setting was tuned on (curves use others)
TUNE_SEED = 30_000  # evaluate's default: starts for trying settings, never the final evaluations' (--seed 20000 are)


class Interrupted(KeyboardInterrupt):
    """The episodes were cut short (Ctrl-C, SIGTERM): their costs are no result."""


def starts_phrase(episodes: int, setting: str) -> str:
    """'50 uniform starts', or for the one hanging start '50 episodes from the hanging start' (what varies between
    them is the planner's noise, not the start)."""
    if setting.startswith("hanging"):
        return f"{episodes} episodes from the hanging start{setting.removeprefix('hanging')}"
    return f"{episodes} {setting} starts"


@dataclasses.dataclass
class Outcomes:
    """Episodes' summed costs and whether each ended in success (the task's test on its last state: the pendulum
    upright, the ball in the cup)."""

    costs: list[float]
    successes: list[bool]

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))


def episode_outcomes(log_folder: Path, task: Task, skip: set[str] = frozenset()) -> Outcomes:
    """Each episode's summed cost and success, from the verified segments but those named in `skip` (a segment
    that fails its check is an error)."""
    segments, problems = verified_segments(log_folder, skip)
    if problems:
        raise RuntimeError(problems[0])
    costs, successes = [], []
    for segment in segments:
        steps = read_segment(segment)[1]["/transition"]
        costs.append(sum(t["cost"] for t in steps))
        successes.append(bool(steps) and bool(task.success(np.array(steps[-1]["next_state"]))))
    return Outcomes(costs, successes)


def sim_profile(
    log_dir: Path,
    name: str,
    task: str,
    seed: int,
    q: str,
    mppi: dict,
    starts: str = "uniform",
    mass_scale: dict | None = None,
    randomise: bool = False,
):
    """The sim profile set up for episodes logged under log_dir/name: starts seeded by (seed, episode id) and,
    unless mppi says otherwise, the planner's noise too; the planner on the mujoco backend for a task given by its
    MJCF alone."""
    profile = load_profile("sim", task=task, log_dir=str(log_dir), model=q, seed=seed, starts=starts)
    profile.backend = cpu_backend_for(get_task(task))  # the sim profile's c backend needs a closed form
    profile.name = name
    profile.standin.mass_scale = dict(mass_scale or {})
    profile.standin.randomise = randomise  # each episode's plant drawn from the task's bias (domain randomisation)
    profile.mppi = {**profile.mppi, "seed": seed, **mppi}
    return profile


def run_episodes(
    log_dir: Path,
    name: str,
    task: str,
    episodes: int,
    seed: int,
    q: str,
    mppi: dict,
    stop=None,
    starts: str = "uniform",
    mass_scale: dict | None = None,
    randomise: bool = False,
) -> Outcomes:
    """`episodes` more episodes on the stand-in through the onboard loop, logged under log_dir/name; their outcomes.
    The ids go on from the folder's last (sim_profile: what they seed). offboard.fleet.Fleet.run_episodes: the
    same over a Ray cluster's stand-ins."""
    profile = sim_profile(log_dir, name, task, seed, q, mppi, starts, mass_scale, randomise)
    before = {entry["segment"] for entry in read_manifest(log_dir / name)}  # the folder's earlier episodes
    run(profile, episodes, show_status=False, stop=stop)
    outcomes = episode_outcomes(log_dir / name, get_task(task), skip=before)  # only this call's: not read again
    if (stop is not None and stop()) or len(outcomes.costs) != episodes:
        raise Interrupted
    return outcomes


@dataclasses.dataclass
class EvalConfig:
    """`python -m offboard evaluate`'s settings (its options, offboard/cli.py)."""

    task: str = "pendulum"  # the task to evaluate on
    q: str = ""  # q.onnx (q.json beside it); leave out for plain MPPI
    H: int | None = None  # horizon; None: the task's
    iters: int | None = None  # MPPI iterations per control step; None: the task's
    K: int | None = None  # samples per step; None: the task's
    temperature: float | None = None  # MPPI's lambda (how sharply it favours low-cost samples); None: the task's
    sigma: float | None = None  # the sampling noise's variance per action dim; None: the task's
    model: Literal["biased", "mean", "true"] = "biased"  # the planner's model (true: the plant's, its scale included)
    starts: Literal["uniform", "hanging"] = "uniform"  # the task's start box, or its fixed hanging start
    episodes: int = 50  # episodes, each from its own seeded start
    seed: int = TUNE_SEED  # seeds the starts and the planner's noise (20000: the demo's held-out final starts)
    mass_scale: tuple[str, ...] = ()  # BODY=FACTOR: the stand-in's plant heavier than its MJCF, e.g. pole=1.3
    out: str = "runs/evaluate"  # a run folder <out>/<time> gets evaluation.json and the episodes' segments

    def mppi(self) -> dict:
        overrides = dict(H=self.H, n_iters=self.iters, K=self.K, model=self.model)
        overrides.update(temperature=self.temperature, sigma=self.sigma)
        return {k: v for k, v in overrides.items() if v is not None}

    def label(self) -> str:
        what = Path(self.q).name if self.q else "MPPI"
        scale = f", plant {' '.join(self.mass_scale)}" if self.mass_scale else ""
        planner = MPPIConfig.for_task(get_task(self.task), **self.mppi())
        given = "".join(f" {name}={getattr(planner, name)}" for name in ("temperature", "sigma") if getattr(self, name))
        return f"{what} H={planner.H} iters={planner.n_iters} {planner.model}{given}{scale}"


def evaluate(cfg: EvalConfig, stop=None) -> dict:
    """Run the episodes and write evaluation.json; returns what it wrote."""
    mass_scale = parse_mass_scale(list(cfg.mass_scale))
    task = get_task(cfg.task, mass_scale)  # an unknown task or body: refused before anything runs
    MPPIConfig.for_task(task, **cfg.mppi())
    if cfg.episodes < 1:
        raise ValueError(f"--episodes {cfg.episodes}: use 1 or more")
    if cfg.seed < 0:
        raise ValueError(f"--seed {cfg.seed}: use 0 or more")
    if cfg.q and not Path(cfg.q).is_file():
        raise ValueError(f"--q {cfg.q}: no such file; give a q.onnx (q.json beside it), or leave --q out for MPPI")
    if cfg.q:
        OnnxQ(cfg.q, task)  # one that does not load, or is another task's: refused before any run folder
    if (blocker := blocking_file(Path(cfg.out))) is not None:
        raise ValueError(f"--out {cfg.out}: {blocker} is a file, not a folder; give a folder for the run folders")
    run_dir = new_run_dir(Path(cfg.out))
    outcomes = run_episodes(
        run_dir, "episodes", cfg.task, cfg.episodes, cfg.seed, cfg.q, cfg.mppi(), stop, cfg.starts, mass_scale
    )
    result = dict(
        settings=dataclasses.asdict(cfg),
        label=cfg.label(),
        costs=outcomes.costs,
        cost=mean_interval(outcomes.costs),
        successes=outcomes.successes,
        success_rate=outcomes.success_rate,
        segments=str(run_dir / "episodes"),
    )
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    result["path"] = str(run_dir / "evaluation.json")
    return result


def add_command(sub) -> None:
    e = sub.add_parser("evaluate", help="a Q or plain MPPI through the stand-in from seeded starts: costs, 95 %% CI")
    add_options(e, EvalConfig)
    e.set_defaults(run=run_command)


def run_command(args) -> int:
    cfg = EvalConfig(**given(args, EvalConfig))
    result = evaluate(cfg)
    c = result["cost"]
    print(
        f"{cfg.task}, {result['label']}, {starts_phrase(cfg.episodes, cfg.starts)} (seed {cfg.seed}): mean episode "
        f"cost {format_stat(c, 1)} (95 %), success "
        f"{result['success_rate']:.2f}; {result['path']}"
    )
    return 0
