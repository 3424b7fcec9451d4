"""`python -m onboard`: the robot-side command line: `run` the control loop, `selfcheck`, and `plan` once."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np

from firmware_bridge.cli import ArgumentParser
from onboard.backends import BACKEND_NAMES, cpu_backend_for
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import ProfileError, load_profile
from onboard.qfunction import ModelError, OnnxQ, trained_settings_mismatch
from onboard.tasks import TASKS, get_task


def cmd_plan(args) -> int:
    task = get_task(args.task)
    args.backend = args.backend or cpu_backend_for(task)
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: use 1 or more")
    overrides = {k: v for k, v in dict(K=args.K, H=args.H, n_iters=args.iters, seed=args.seed).items() if v is not None}
    config = MPPIConfig.for_task(task, model=args.model, **overrides)
    q = OnnxQ(args.q, task, threads=args.threads) if args.q else None
    if q is not None and (mismatch := trained_settings_mismatch(q, config)):
        logging.getLogger("mpq.plan").warning(mismatch)
    if args.state is None:
        state = task.hanging_state()
    else:
        try:
            state = np.array([float(v) for v in args.state.split(",")])
        except ValueError:
            raise ValueError(
                f"--state {args.state}: give {task.state_dim} comma-separated numbers (time, qpos, qvel)"
            ) from None
        if state.shape != (task.state_dim,):
            raise ValueError(f"--state has {state.size} values, task {task.name!r} needs {task.state_dim}")
        if not np.all(np.isfinite(state)):
            raise ValueError(f"--state {args.state}: every value must be a finite number")
    plan = MPPI(task, config, args.backend, q=q, threads=args.threads).plan(state[None])
    if not (np.isfinite(plan.value[0]) and np.isfinite(plan.min_cost[0])):
        raise ValueError(
            f"--state {args.state}: every rollout's cost overflows from there (value {plan.value[0]}): give a state "
            "the robot can be in"
        )
    report = dict(
        task=task.name,
        backend=args.backend,
        q=None if q is None else dict(path=str(q.path), sha256=q.sha256),
        config=config.to_dict(),
        state=state.tolist(),
        actions=plan.actions[0].tolist(),
        value=float(plan.value[0]),
        ess=float(plan.ess[0]),
        min_cost=float(plan.min_cost[0]),
        ms=plan.seconds * 1e3,
    )
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        first = ", ".join(f"{v:+.3f}" for v in plan.actions[0, 0])
        print(f"{task.name} from {np.array2string(state, precision=3)}: first action [{first}]")
        print(
            f"  value {report['value']:.3f}  ESS {report['ess']:.1f}/{config.K}  min cost {report['min_cost']:.3f}"
            f"  {report['ms']:.2f} ms ({args.backend}, {'ONNX Q' if q else 'no terminal Q'})"
        )
    return 0


def cmd_run(args) -> int:
    from onboard.loop import run

    if args.episodes < 0:
        raise ValueError(f"--episodes {args.episodes}: use 0 (until stopped) or a positive count")
    profile = overridden_profile(args)
    stats = run(profile, args.episodes, show_status=not args.quiet)
    if args.json:
        print(json.dumps(stats.summary()))
        return 0
    stopped = "stopped by Ctrl-C, SIGTERM or SIGHUP after " if stats.stopped else ""
    print(
        f"{stopped}{stats.episodes} episode(s), {stats.steps} steps, {stats.deadline_misses} deadline misses; "
        f"segments in {profile.log_path / profile.name}"
    )
    return 0


def cmd_selfcheck(args) -> int:
    from onboard.selfcheck import selfcheck

    for line in selfcheck(overridden_profile(args), link=not args.offline):
        print(line)
    return 0


def add_profile_options(parser) -> None:
    """The robot's profile and what a run or a selfcheck may change of it for once (a new task, a trial model)."""
    parser.add_argument("--robot", default="sim", help="robots/<name>.toml, or a path to a profile")
    parser.add_argument("--task", choices=sorted(TASKS), help="override the profile's task")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), help="override the profile's mode")
    parser.add_argument("--backend", choices=BACKEND_NAMES, help="override the profile's backend")
    parser.add_argument("--model", help="override the profile's q.onnx ('' for plain MPPI)")
    parser.add_argument("--log-dir", help="override the profile's log folder")


def overridden_profile(args):
    if args.log_dir == "":
        raise ValueError("--log-dir '': give the folder for the segments, or leave it out for the profile's log_dir")
    return load_profile(
        args.robot, task=args.task, mode=args.mode, model=args.model, log_dir=args.log_dir, backend=args.backend
    )


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m onboard", description="mpq on the robot")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run episodes against the robot's plant, logging MCAP segments")
    add_profile_options(run)
    run.add_argument("--episodes", type=int, default=1, help="0: until stopped (Ctrl-C, SIGTERM)")
    run.add_argument("--quiet", action="store_true", help="no live status line")
    run.add_argument("--json", action="store_true", help="print the run's numbers as JSON")
    check = sub.add_parser("selfcheck", help="verify the model, open the port, handshake; non-zero on failure")
    add_profile_options(check)
    check.add_argument("--offline", action="store_true", help="skip the plant link (the port is in use)")
    plan = sub.add_parser("plan", help="plan once from a state and print the plan")
    plan.add_argument("--task", default="pendulum", choices=sorted(TASKS))
    plan.add_argument("--backend", choices=BACKEND_NAMES, help="default: c, or mujoco for a task without a closed form")
    plan.add_argument("--q", help="q.onnx (with q.json beside it) as the terminal value; none: plain MPPI")
    plan.add_argument("--state", help="comma-separated full physics state (time, qpos, qvel); default: hanging at rest")
    plan.add_argument("--model", default="biased", choices=("biased", "mean", "true"), help="planner parameters")
    plan.add_argument("--K", type=int)
    plan.add_argument("--H", type=int)
    plan.add_argument("--iters", type=int)
    plan.add_argument("--seed", type=int)
    plan.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, and the mujoco backend's")
    plan.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    command = {"plan": cmd_plan, "run": cmd_run, "selfcheck": cmd_selfcheck}[args.command]
    try:
        return command(args)
    except (ModelError, ProfileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: not enough memory for these MPPI settings (K x H samples): lower K or H", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # the link, the loop, the plant
        after_status_line = args.command == "run" and sys.stderr.isatty()
        print(f"{chr(10) if after_status_line else ''}error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C before the loop took over the signals (the handshake), or a second one
        after = (
            "; a plant it had armed was sent a disarm, an episode it cut short is closed as interrupted"
            if args.command == "run"
            else ""
        )
        print(f"\ninterrupted: {args.command} stopped at once{after}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
