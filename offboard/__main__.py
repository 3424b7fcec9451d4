"""`python -m offboard`: train the soft-Q from robot logs, export it, deploy it, pull the robot's logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offboard.dataset import DatasetError
from offboard.deploy import DeployError, add_commands, run_command
from offboard.export import ExportError, export, export_extra, load_checkpoint
from offboard.mpq import Config, train
from onboard.profile import ProfileError, load_profile
from onboard.tasks import get_task


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
    e = sub.add_parser("export", help="export a training checkpoint to q.onnx + q.json")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--model", help="default models/<task>/q.onnx")
    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command not in ("train", "export"):
        try:
            return run_command(args, load_profile(args.robot))
        except ProfileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except DeployError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: run {args.command} again (a deploy restarts cleanly, a pull resumes)", file=sys.stderr
            )
            return 130
    try:
        if args.command == "train":
            config = Config(
                task=args.task, data=tuple(args.data), iterations=args.iterations, updates_per_iteration=args.updates,
                horizon=args.horizon, target_network=args.target_network, buffer_window=args.window, out=args.out,
                seed=args.seed,
            )  # fmt: skip
            get_task(config.task)
            result = train(config)
            last = result.history[-1]
            print(f"trained on {len(result.buffer)} transitions from {len(result.buffer.segments)} segments; "
                  f"held-out Bellman error {result.history[0]['holdout_bellman_error']:.3g} -> "
                  f"{last['holdout_bellman_error']:.3g}; run in {result.run_dir}")  # fmt: skip
            model = Path(args.model or f"models/{config.task}/q.onnx")
            export(result.net, config.task, model, export_extra(config.to_dict(), result.buffer.segments))
            print(f"exported {model} (+ {model.with_suffix('.json').name})")
        else:
            net, checkpoint = load_checkpoint(args.checkpoint)
            config = checkpoint["config"]
            model = Path(args.model or f"models/{config['task']}/q.onnx")
            export(net, config["task"], model, export_extra(config, checkpoint.get("segments", [])))
            print(f"exported {model} (+ {model.with_suffix('.json').name}) from {args.checkpoint}")
    except (DatasetError, ExportError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
