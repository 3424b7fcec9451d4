"""`make sweep`: one of the demo's settings swept over values and training seeds on Ray Tune.

Each trial is a whole train-and-evaluate: MPQ learned through the stand-in as the demo learns it (offboard.demo.learn,
with the value set; --td-lambda below 1 is MPQ(lambda) with that lambda throughout), then its final Q on
`--final-episodes` new uniform starts (the final evaluation's seed). The
sweep writes one table (mean episode cost and success per value, 95 % intervals over seeds and starts) and one plot:
the paper's Fig. 3 with PARAM=H on the ball-in-cup (success against MPQ's horizon; longer horizons suffer from the
model's bias), the pendulum's now. Ray Tune schedules the trials on the cluster at --ray (auto: the one running
here; empty: a Ray started for the sweep on this machine), one CPU each.

    python -m offboard.sweep --task pendulum --param horizon --values 4,8,16 --sweep-seeds 3 [demo options]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from firmware_bridge.cli import ArgumentParser
from offboard.cli import add_options, given
from offboard.demo import DEMO_SETTINGS, DemoConfig, Log, config_from_dict, config_problem, evaluate, learn
from offboard.evaluate import FINAL_EVAL_SEED
from offboard.jobs import Stop
from offboard.stats import format_stat, seeds_cost_interval, seeds_success_interval
from offboard.target_workers import address_problem, connect, require_ray
from onboard.fileio import new_run_dir
from onboard.mppi import MPPIConfig
from onboard.tasks import get_task

ALIASES = {"H": "horizon"}  # the paper's name for MPQ's horizon
# The demo's settings a trial has no use for: it trains MPQ alone (with one lambda, --td-lambda), runs in one process
# of the sweep's cluster and is evaluated on uniform starts of the TRUE plant, without a video.
NOT_IN_A_TRIAL = (
    *("seeds", "workers", "ray", "fleet", "video", "mpq_lambda", "td_lambda_final", "soft_q", "domain_randomisation"),
    *("final_starts", "robustness"),
)
SWEPT = ("horizon", "updates_per_iteration", "batch_size", "episodes_per_iteration", "target_iters", "td_lambda")


def trial(config: dict) -> dict:
    """One value and one training seed: learn, then the final Q on new starts; what Tune records."""
    cfg = config_from_dict({**config["demo"], config["param"]: config["value"], "seed": config["seed"]})
    cfg.horizon = MPPIConfig.for_task(get_task(cfg.task)).H if cfg.horizon is None else cfg.horizon
    here = Path(config["out"]) / f"{config['param']}={config['value']}" / f"seed{cfg.seed}"
    stop = Stop()
    td_lambda = (cfg.td_lambda, None)  # one lambda for the whole run (1: the paper's MPQ)
    learned = learn(cfg, here, "MPQ", cfg.seed, cfg.horizon, False, td_lambda, False, Log(time.monotonic()), stop=stop)
    mppi = dict(H=cfg.horizon, td_lambda=learned["td_lambda"])
    final = evaluate(cfg, here / "final", "MPQ", cfg.final_episodes, FINAL_EVAL_SEED, learned["model"], mppi, stop=stop)
    return dict(value=config["value"], seed=cfg.seed, costs=final["costs"], successes=final["successes"])


def _report(config: dict) -> None:
    """The Tune trainable: the trial's numbers reported once."""
    from ray import tune

    tune.report(trial(config))


def sweep(cfg: DemoConfig, param: str, values: list, seeds: int, address: str, run_dir: Path) -> list[dict]:
    """Every (value, seed) trial on Ray Tune, at most one per CPU at once; their results by value, then seed."""
    connect(address or None)
    from ray import tune

    space = dict(
        demo=dataclasses.asdict(cfg),
        param=param,
        out=str(run_dir.resolve()),
        value=tune.grid_search(values),
        seed=tune.grid_search(list(range(cfg.seed, cfg.seed + seeds))),
    )
    tuner = tune.Tuner(
        tune.with_resources(_report, {"cpu": 1}),
        param_space=space,
        run_config=tune.RunConfig(storage_path=str((run_dir / "tune").resolve()), name="sweep", verbose=0),
    )
    results = tuner.fit()
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} trial(s) failed; the first: {failed[0]}")
    trials = [r.metrics for r in results]
    return sorted(
        ({k: t[k] for k in ("value", "seed", "costs", "successes")} for t in trials),
        key=lambda t: (values.index(t["value"]), t["seed"]),
    )


def table(param: str, values: list, trials: list[dict]) -> tuple[str, list[dict]]:
    """The Markdown table and its rows: each value's mean cost and success over its seeds x starts (intervals over
    the seeds where there are two or more)."""
    rows = []
    for value in values:
        mine = [t for t in trials if t["value"] == value]
        costs, successes = [t["costs"] for t in mine], [t["successes"] for t in mine]
        rows.append(
            dict(
                value=value, seeds=len(mine), cost=seeds_cost_interval(costs), success=seeds_success_interval(successes)
            )
        )
    lines = [f"| {param} | seeds | mean episode cost [95 %] | success [95 %] |", "|---|---|---|---|"]
    for row in rows:
        c, s = row["cost"], row["success"]
        lines.append(f"| {row['value']} | {row['seeds']} | {format_stat(c, 1)} | {format_stat(s, 2)} |")
    return "\n".join(lines), rows


def plot(param: str, rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(rows))
    for ax, key, what in ((axes[0], "cost", "mean episode cost"), (axes[1], "success", "success")):
        mean = np.array([r[key]["mean"] for r in rows])
        err = np.array([[r[key]["mean"] - r[key]["low"], r[key]["high"] - r[key]["mean"]] for r in rows]).T
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=4)
        ax.set_xticks(x, [str(r["value"]) for r in rows])
        ax.set_xlabel(param)
        ax.set_ylabel(f"{what} (95 % interval)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SWEEP_DEFAULTS = dict(final_episodes=20, soft_q=False, mpq_lambda=False)  # where a trial differs from the demo
SWEEP_HELPS = dict(
    final_episodes="new starts per trial in the final evaluation, the sweep's numbers (1 or more)",
    out="the sweep's folder <out>/<time> gets sweep.md, sweep.png, sweep.json and <param>=<value>/seed<n>/ per trial",
)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m offboard.sweep", description=__doc__.splitlines()[0])
    add_options(parser, DemoConfig, skip=NOT_IN_A_TRIAL, defaults=SWEEP_DEFAULTS, helps=SWEEP_HELPS)
    parser.add_argument("--param", required=True, help=f"the demo's setting to sweep: {', '.join(SWEPT)} (or H)")
    parser.add_argument("--values", required=True, help="its values, comma-separated: 1,4,8,16")
    parser.add_argument("--sweep-seeds", type=int, default=3, help="training seeds per value (seed, seed+1, ...)")
    # dest cluster: the sweep's cluster runs the trials, each learning in its own process (not DemoConfig.ray)
    parser.add_argument("--ray", dest="cluster", default="", help="a Ray cluster: auto or host:port (empty: one here)")
    args = parser.parse_args(argv)
    settings = given(args, DemoConfig)
    task_name = settings.get("task", DemoConfig.task)
    cfg = DemoConfig(**{**DEMO_SETTINGS.get(task_name, {}), **SWEEP_DEFAULTS, **settings})
    param = ALIASES.get(args.param, args.param)
    try:
        if problem := address_problem(args.cluster):
            raise ValueError(problem)
        require_ray()
        if param not in SWEPT:
            raise ValueError(f"--param {args.param}: sweep one of {', '.join(SWEPT)} (or H)")
        kind = float if param == "td_lambda" else int
        try:
            values = [kind(v) for v in args.values.split(",")]
        except ValueError:
            raise ValueError(f"--values {args.values}: give {kind.__name__}s, comma-separated") from None
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:  # two trials of one value and seed would share a folder
            raise ValueError(f"--values {args.values}: {', '.join(map(str, twice))} given twice; give each value once")
        if args.sweep_seeds < 1 or cfg.final_episodes < 1:
            raise ValueError("--sweep-seeds and --final-episodes: use 1 or more")
        task = get_task(cfg.task)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # No long baseline runs in a sweep: its horizon only has to stay above every swept one for the checks.
    longest = max(values) if param == "horizon" else cfg.horizon or MPPIConfig.for_task(task).H
    cfg.long_horizon = max(cfg.long_horizon or task.long_horizon, longest + 1)
    for value in values:  # every trial's settings checked before anything runs
        probe = dataclasses.replace(cfg, **{param: value})
        probe.horizon = MPPIConfig.for_task(task).H if probe.horizon is None else probe.horizon
        if (problem := config_problem(probe)) is not None:
            print(f"error: --values {value}: {problem}", file=sys.stderr)
            return 2
    try:
        connect(args.cluster or None)  # before the run folder: a cluster that does not answer leaves nothing behind
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = new_run_dir(Path(cfg.out))
    started = time.monotonic()
    trials = sweep(cfg, param, values, args.sweep_seeds, args.cluster, run_dir)
    text, rows = table(args.param, values, trials)
    title = (
        f"MPQ on the {task.name} stand-in: {args.param} swept, {args.sweep_seeds} seeds x {cfg.final_episodes} starts"
    )
    plot(args.param, rows, run_dir / "sweep.png", title)
    results = dict(config=dataclasses.asdict(cfg), param=param, values=values, rows=rows, trials=trials)
    results["seconds"] = time.monotonic() - started
    (run_dir / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "sweep.md").write_text(text + "\n")
    print(text)
    print(f"wrote {run_dir}/sweep.png, sweep.md, sweep.json ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
