"""`make demo`: MPQ learning through the hardware-in-the-loop path, against the paper's baselines.

Every episode runs on the real stack: the onboard loop (MPPI on the BIASED model, ONNX Q) drives the
firmware stand-in (MuJoCo, TRUE parameters) over a pty in lockstep and logs verified MCAP segments.
Each iteration: collect episodes with the current Q -> train on all verified segments -> export q.onnx
-> reload it onboard -> evaluate on fixed-seed starts. The baselines run the same evaluation once:
MPPI H=8 and H=32 with the biased model, MPPI H=32 with the TRUE model (the upper bound MPPI can
reach), and soft Q-learning (H=1, target network) trained the same way (the paper's Fig. 2; docs/algorithm.md).
Writes runs/demo/<time>/: learning_curve.png, results.json (every number, the full configuration),
and the final q.onnx + q.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from offboard.export import export, export_extra
from offboard.mpq import Config, train
from onboard.fileio import blocking_file
from onboard.loop import run
from onboard.mppi import MPPIConfig
from onboard.profile import load_profile
from onboard.recorder import read_segment, verified_segments
from onboard.tasks import get_task

EVAL_SEED = 10_000  # evaluation starts: the task's start distribution, seeded by EVAL_SEED + episode id


@dataclasses.dataclass
class DemoConfig:
    task: str = "pendulum"
    iterations: int = 10  # collect -> train -> export -> evaluate, this many times (make reproduce: 20)
    episodes_per_iteration: int = 5  # training episodes collected per iteration (N_update)
    eval_episodes: int = 10
    updates_per_iteration: int = 500  # M minibatches of the training after each collection
    batch_size: int = 64
    horizon: int | None = None  # MPQ's H (None: the task's, the pendulum's 8)
    long_horizon: int | None = None  # the long MPPI baseline (None: the task's, the pendulum's 32)
    soft_q: bool = True  # also train the soft-Q baseline (H=1, target network)
    out: str = "runs/demo"
    seed: int = 0


def episode_costs(log_folder: Path) -> list[float]:
    segments, problems = verified_segments(log_folder)
    if problems:
        raise RuntimeError(problems[0])
    return [sum(t["cost"] for t in read_segment(s)[1]["/transition"]) for s in segments]


class Stop:
    """One Ctrl-C or SIGTERM stops the whole demo. While episodes run, the loop sees it at its next step, ends its
    segment cleanly and disarms, and the demo stops after it; elsewhere (training, export) it interrupts at once."""

    def __init__(self):
        self.requested = False
        self.in_episodes = False

    def __call__(self) -> bool:
        return self.requested

    def handler(self, signum, frame) -> None:
        first = not self.requested
        self.requested = True
        if not (first and self.in_episodes):
            raise KeyboardInterrupt


def run_episodes(
    robot_dir: Path, name: str, task: str, episodes: int, seed: int, q: str, mppi: dict, stop: Stop
) -> list[float]:
    """Episodes on the stand-in through the onboard loop; returns their costs (from the verified logs)."""
    profile = load_profile("sim", task=task, log_dir=str(robot_dir), model=q, seed=seed)
    profile.name = name
    profile.mppi = {**profile.mppi, **mppi}
    stop.in_episodes = True
    try:
        run(profile, episodes, show_status=False, stop=stop)
    finally:
        stop.in_episodes = False
    if stop():  # the stage was cut short: its costs are no result
        raise KeyboardInterrupt
    return episode_costs(robot_dir / name)


def learn(cfg: DemoConfig, run_dir: Path, label: str, horizon: int, target_network: bool, log, stop: Stop) -> dict:
    """The closed loop for one learner; returns its learning curve."""
    data, models = run_dir / label / "data", run_dir / label / "models"
    curve, model, net = [], "", None
    for iteration in range(1, cfg.iterations + 1):
        started = time.monotonic()
        run_episodes(data, "robot", cfg.task, cfg.episodes_per_iteration, cfg.seed, model, dict(H=horizon), stop)
        config = Config(
            task=cfg.task, data=(str(data / "robot"),), out=str(run_dir / label / "train"), iterations=1,
            updates_per_iteration=cfg.updates_per_iteration, batch_size=cfg.batch_size, horizon=horizon,
            target_network=target_network, seed=cfg.seed + iteration,
        )  # fmt: skip
        result = train(config, net=net, progress=False, log=lambda *_: None)
        net = result.net  # the next iteration goes on training the same Q
        path = models / f"iter{iteration:03d}" / "q.onnx"
        export(result.net, cfg.task, path, export_extra(config.to_dict(), result.buffer.segments))
        model = str(path)
        costs = run_episodes(
            run_dir / label / "eval",
            f"iter{iteration:03d}",
            cfg.task,
            cfg.eval_episodes,
            EVAL_SEED,
            model,
            dict(H=horizon),
            stop,
        )
        point = dict(
            iteration=iteration,
            training_episodes=iteration * cfg.episodes_per_iteration,
            eval_cost_mean=float(np.mean(costs)),
            eval_cost_std=float(np.std(costs)),
            eval_costs=costs,
            holdout_bellman_error_before=result.history[0]["holdout_bellman_error"],
            holdout_bellman_error=result.history[-1]["holdout_bellman_error"],
            model=model,
            seconds=time.monotonic() - started,
        )
        curve.append(point)
        log(
            f"{label} iteration {iteration}/{cfg.iterations}: {point['training_episodes']} training episodes, "
            f"eval cost {point['eval_cost_mean']:.1f} +- {point['eval_cost_std']:.1f}, "
            f"held-out Bellman error {point['holdout_bellman_error']:.3g} ({point['seconds']:.0f} s)"
        )
    return dict(horizon=horizon, target_network=target_network, curve=curve)


def plot(results: dict, path: Path, task) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, learner in results["learners"].items():
        x = [p["training_episodes"] for p in learner["curve"]]
        y = [p["eval_cost_mean"] for p in learner["curve"]]
        ax.plot(x, y, marker="o", label=f"{label} (H={learner['horizon']})")
    for (label, baseline), style in zip(results["baselines"].items(), (":", "--", "-."), strict=True):
        ax.axhline(baseline["eval_cost_mean"], linestyle=style, color="gray", label=label)
    ax.set_xlabel("training episodes on the plant")
    ax.set_ylabel(f"mean episode cost over {results['config']['eval_episodes']} fixed-seed starts")
    ax.set_title(f"MPQ on the {task.name} stand-in (biased planner model)")
    minutes = task.episode_steps * task.dt / 60
    top = ax.secondary_xaxis("top", functions=(lambda e: e * minutes, lambda m: m / minutes))
    top.set_xlabel("minutes of plant interaction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def config_problem(cfg: DemoConfig) -> str | None:
    """What is wrong with the settings (None: nothing), found before anything runs: the loop reads 0 episodes as
    "until stopped", so a count below 1 would run forever."""
    for name in ("iterations", "episodes_per_iteration", "eval_episodes", "updates_per_iteration", "batch_size"):
        if getattr(cfg, name) < 1:
            return f"--{name.replace('_', '-')} {getattr(cfg, name)}: use 1 or more"
    if cfg.seed < 0:
        return f"--seed {cfg.seed}: use 0 or more"
    if not 1 <= cfg.horizon < cfg.long_horizon:
        return (
            f"--horizon {cfg.horizon} must be >= 1 and below --long-horizon {cfg.long_horizon}: "
            "MPQ's point is a short horizon against a long one"
        )
    blocker = blocking_file(Path(cfg.out))
    if blocker is not None:
        return f"--out {cfg.out}: {blocker} is a file, not a folder; give a folder for the demo's run folders"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offboard.demo", description=__doc__.splitlines()[0])
    kinds = {"bool": lambda v: v.lower() in ("1", "true", "yes"), "int | None": int}  # the rest: as the default
    for field in dataclasses.fields(DemoConfig):
        kind = kinds.get(str(field.type), type(field.default))
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)
    args = parser.parse_args(argv)
    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    try:
        task = get_task(cfg.task)
    except ValueError as e:
        print(f"error: --task: {e}", file=sys.stderr)
        return 2
    cfg.horizon = MPPIConfig.for_task(task).H if cfg.horizon is None else cfg.horizon
    cfg.long_horizon = task.long_horizon if cfg.long_horizon is None else cfg.long_horizon
    problem = config_problem(cfg)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.out) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    stop = Stop()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo(cfg, task, run_dir, stop)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the demo stopped; its partial run is in {run_dir} (no results.json)", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def demo(cfg: DemoConfig, task, run_dir: Path, stop: Stop) -> None:
    """Baselines, learners, the final model, then the plot and results.json: results.json last, so that a run
    folder holding it is a complete run."""
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {line}", flush=True)

    log(f"demo in {run_dir}: {cfg}")
    baselines = {}
    for label, horizon, model in (
        (f"MPPI H={cfg.horizon} biased", cfg.horizon, "biased"),
        (f"MPPI H={cfg.long_horizon} biased", cfg.long_horizon, "biased"),
        (f"MPPI H={cfg.long_horizon} TRUE model", cfg.long_horizon, "true"),
    ):
        name = label.replace(" ", "_").replace("=", "")
        mppi = dict(H=horizon, model=model)
        costs = run_episodes(run_dir / "baselines", name, cfg.task, cfg.eval_episodes, EVAL_SEED, "", mppi, stop)
        baselines[label] = dict(horizon=horizon, model=model, eval_cost_mean=float(np.mean(costs)),
                                eval_cost_std=float(np.std(costs)), eval_costs=costs)  # fmt: skip
        log(f"{label}: eval cost {np.mean(costs):.1f} +- {np.std(costs):.1f}")
    learners = {"MPQ": learn(cfg, run_dir, "MPQ", cfg.horizon, False, log, stop)}
    if cfg.soft_q:
        learners["soft-Q"] = learn(cfg, run_dir, "soft-Q", 1, True, log, stop)

    final = learners["MPQ"]["curve"][-1]
    shutil.copy(final["model"], run_dir / "q.onnx")
    shutil.copy(Path(final["model"]).with_suffix(".json"), run_dir / "q.json")
    true_cost = baselines[f"MPPI H={cfg.long_horizon} TRUE model"]["eval_cost_mean"]
    acceptance = dict(
        mpq_final_eval_cost=final["eval_cost_mean"],
        training_episodes=final["training_episodes"],
        beats_mppi_short_biased=final["eval_cost_mean"] < baselines[f"MPPI H={cfg.horizon} biased"]["eval_cost_mean"],
        beats_mppi_long_biased=final["eval_cost_mean"]
        < baselines[f"MPPI H={cfg.long_horizon} biased"]["eval_cost_mean"],
        within_10_percent_of_true_model=final["eval_cost_mean"] <= 1.1 * true_cost,
    )
    results = dict(
        config=dataclasses.asdict(cfg), task=cfg.task, baselines=baselines, learners=learners,
        acceptance=acceptance, seconds=time.monotonic() - started,
    )  # fmt: skip
    plot(results, run_dir / "learning_curve.png", task)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"acceptance: {json.dumps(acceptance)}")
    log(f"wrote {run_dir}/learning_curve.png, results.json, q.onnx, q.json")


if __name__ == "__main__":
    raise SystemExit(main())
