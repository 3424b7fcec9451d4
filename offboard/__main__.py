"""`python -m offboard`: train the soft-Q from robot logs, export it, evaluate it, deploy it, pull the robot's logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offboard.dataset import DatasetError
from offboard.deploy import add_commands as add_deploy_commands
from offboard.deploy import run_command as run_deploy_command
from offboard.evaluate import add_command as add_evaluate
from offboard.evaluate import run_command as run_evaluation
from offboard.export import ExportError, check_model_path, export, export_extra, load_checkpoint
from offboard.mpq import Config, train
from offboard.pull_data import add_command as add_pull_data
from offboard.pull_data import run_command as run_pull_data
from offboard.remote import RemoteError
from onboard.fileio import blocking_file
from onboard.profile import ProfileError, load_profile
from onboard.tasks import get_task


def model_path(model: str | None, task: str) -> Path:
    """--model, or models/<task>/q.onnx; refused now if export could not write it."""
    if model == "":
        raise ValueError("--model is empty: give a path such as q.onnx, or leave --model out for models/<task>/q.onnx")
    path = Path(model or f"models/{task}/q.onnx")
    check_model_path(path)
    return path


def check_train_args(args) -> Path:
    """Every refusal that needs no training, made before any: the model path to export to."""
    get_task(args.task)
    for option, value, least in (
        ("iterations", args.iterations, 1),
        ("updates", args.updates, 1),
        ("window", args.window, 0),
        ("seed", args.seed, 0),
    ):
        if value < least:
            raise ValueError(f"--{option} {value}: use {least} or more")
    for option, value in (("td-lambda", args.td_lambda), ("td-lambda-final", args.td_lambda_final)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"--{option} {value}: use a number from 0 to 1 (1: the paper's MPQ)")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ValueError(f"--torch-threads {args.torch_threads}: use 1 or more")
    if args.horizon is not None and args.horizon < 1:
        raise ValueError(f"--horizon {args.horizon}: use 1 or more (1: soft Q)")
    blocker = blocking_file(Path(args.out))
    if blocker is not None:
        raise ValueError(f"--out {args.out}: {blocker} is a file, not a folder; give a folder for the run folders")
    for folder in args.data:
        if not Path(folder).is_dir():
            what = "is a file, not a log folder" if Path(folder).exists() else "does not exist"
            raise ValueError(f"--data {folder} {what}: give a robot log folder such as data/sim (make sim records one)")
    return model_path(args.model, args.task)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="MPQ training from verified robot logs; exports models/<task>/q.onnx")
    t.add_argument("--task", default="pendulum")
    t.add_argument("--data", nargs="+", default=["data/sim"], help="robot log folders")
    t.add_argument("--iterations", type=int, default=Config.iterations)
    t.add_argument("--updates", type=int, default=Config.updates_per_iteration, help="minibatches per iteration")
    t.add_argument(
        "--horizon", type=int, default=Config.horizon, help="H of the target MPPI (default: the task's; 1: soft Q)"
    )
    t.add_argument("--target-network", action="store_true", help="the soft-Q baseline's target network")
    t.add_argument("--window", type=int, default=0, help="train on the newest N transitions (0: all)")
    t.add_argument("--out", default=Config.out)
    t.add_argument("--model", help="where to export (default models/<task>/q.onnx)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--td-lambda",
        type=float,
        default=1.0,
        help="MPQ(lambda): the blend of returns in the targets (1: the paper's MPQ)",
    )
    t.add_argument("--td-lambda-final", type=float, help="MPQ(lambda): lambda at the last iteration (linear decay)")
    t.add_argument("--torch-threads", type=int, help="torch's CPU threads (default: half this machine's CPUs)")
    e = sub.add_parser("export", help="export a training checkpoint to q.onnx + q.json")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--model", help="default models/<task>/q.onnx")
    add_evaluate(sub)
    add_deploy_commands(sub)
    add_pull_data(sub)
    args = parser.parse_args(argv)
    if args.command not in ("train", "export", "evaluate"):
        try:
            command = run_pull_data if args.command == "pull-data" else run_deploy_command
            return command(args, load_profile(args.robot))
        except ProfileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except RemoteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # this machine's side: a data folder that is read-only or full
            print(
                f"error: {args.command}: {e.strerror}: {e.filename or ''} (free space there, or fix its permissions)",
                file=sys.stderr,
            )
            return 1
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: run {args.command} again (a deploy restarts cleanly, a pull resumes)", file=sys.stderr
            )
            return 130
    try:
        if args.command == "evaluate":
            return run_evaluation(args)
        if args.command == "train":
            model = check_train_args(args)
            config = Config(
                task=args.task,
                data=tuple(args.data),
                iterations=args.iterations,
                updates_per_iteration=args.updates,
                horizon=args.horizon,
                target_network=args.target_network,
                buffer_window=args.window,
                out=args.out,
                seed=args.seed,
                torch_threads=args.torch_threads,
                td_lambda=args.td_lambda,
                td_lambda_final=args.td_lambda_final,
            )
            result = train(config)
            first, last = result.history[0], result.history[-1]
            print(
                f"trained on {len(result.buffer)} transitions from {len(result.buffer.segments)} segments; "
                f"held-out Bellman error {first['holdout_bellman_error_before']:.3g} -> "
                f"{last['holdout_bellman_error']:.3g} ({last['held_out']} held-out transitions); "
                f"run in {result.run_dir}"
            )
            export(result.net, config.task, model, export_extra(result.trained_config, result.buffer.segments))
            print(f"exported {model} (+ {model.with_suffix('.json').name})")
        else:
            net, checkpoint = load_checkpoint(args.checkpoint)
            config = checkpoint["config"]
            model = model_path(args.model, config["task"])
            export(net, config["task"], model, export_extra(config, checkpoint.get("segments", [])))
            print(f"exported {model} (+ {model.with_suffix('.json').name}) from {args.checkpoint}")
    except (DatasetError, ExportError, ValueError, FileNotFoundError) as e:  # the input: a model, profile, setting
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # evaluate's loop, link or stand-in; this machine's disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.command} did not finish; run it again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
