"""`python -m offboard`: train the soft-Q from robot logs, export it, evaluate it, deploy it, pull the robot's logs,
export them as a Minari dataset, replay an episode as a video."""

from __future__ import annotations

import sys
from pathlib import Path

from firmware_bridge.cli import ArgumentParser
from firmware_bridge.paths import blocking_file
from offboard.cli import add_options, given
from offboard.dataset import DatasetError
from offboard.deploy import add_commands as add_deploy_commands
from offboard.evaluate import add_command as add_evaluate
from offboard.minari_export import add_command as add_export_minari
from offboard.pull_data import add_command as add_pull_data
from offboard.remote import RemoteError
from offboard.replay import add_command as add_replay
from onboard.profile import ProfileError, load_profile
from onboard.signals import terminate_as_ctrl_c


def model_path(model: str | None, task: str) -> Path:
    """--model, or models/<task>/q.onnx; refused now if export could not write it."""
    from offboard.export import check_model_path

    if model == "":
        raise ValueError("--model is empty: give a path such as q.onnx, or leave --model out for models/<task>/q.onnx")
    path = Path(model or f"models/{task}/q.onnx")
    check_model_path(path)
    return path


def check_train_paths(config, model: str | None) -> Path:
    """The refusals about files, made before any training (the settings checked themselves): the export path."""
    blocker = blocking_file(Path(config.out))
    if blocker is not None:
        raise ValueError(f"--out {config.out}: {blocker} is a file, not a folder; give a folder for the run folders")
    for folder in config.data:
        if not Path(folder).is_dir():
            what = "is a file, not a log folder" if Path(folder).exists() else "does not exist"
            raise ValueError(f"--data {folder} {what}: give a robot log folder such as data/sim (make sim records one)")
    return model_path(model, config.task)


def run_train(args) -> int:
    from offboard.export import export, export_extra
    from offboard.mpq import Config, train

    config = Config(**given(args, Config))
    model = check_train_paths(config, args.model)
    result = train(config)
    first, last = result.history[0], result.history[-1]
    print(
        f"trained on {len(result.buffer) - last['held_out']} of {len(result.buffer)} transitions from "
        f"{len(result.buffer.segments)} segments; held-out Bellman error {first['holdout_bellman_error_before']:.3g} "
        f"-> {last['holdout_bellman_error']:.3g} (on the other {last['held_out']}); "
        f"run in {result.run_dir}"
    )
    export(result.net, config.task, model, export_extra(result.trained_config, result.buffer.segments))
    print(f"exported {model} (+ {model.with_suffix('.json').name})")
    return 0


def run_export(args) -> int:
    from offboard.export import export, export_extra, load_checkpoint

    net, checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    model = model_path(args.model, config["task"])
    export(net, config["task"], model, export_extra(config, checkpoint.get("segments", [])))
    print(f"exported {model} (+ {model.with_suffix('.json').name}) from {args.checkpoint}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the parser itself has only --help
    parser = ArgumentParser(prog="python -m offboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="MPQ training from verified robot logs; exports models/<task>/q.onnx")
    if command == "train":  # torch (seconds to load) only for train and export: a pull or a deploy never needs it
        from offboard.mpq import Config

        add_options(t, Config)
    t.add_argument("--model", help="where to export (default models/<task>/q.onnx)")
    t.set_defaults(run=run_train)
    e = sub.add_parser("export", help="export a training checkpoint to q.onnx + q.json")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--model", help="default models/<task>/q.onnx")
    e.set_defaults(run=run_export)
    for add_command in (add_evaluate, add_export_minari, add_replay, add_deploy_commands, add_pull_data):
        add_command(sub)  # each sets its parser's run
    args = parser.parse_args(argv)
    if hasattr(args, "robot"):  # deploy, rollback, robot-status, pull-data: the robot's profile, over ssh
        try:
            with terminate_as_ctrl_c():  # a `kill` or a closed terminal stops the rsync and ssh it started, too
                if isinstance(args.robot, list):  # pull-data: one or more robots
                    return args.run(args, [load_profile(robot) for robot in args.robot])
                return args.run(args, load_profile(args.robot))
        except (ProfileError, ValueError) as e:  # the profile, or its task (its module, its MJCF)
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
        return args.run(args)
    except (DatasetError, ValueError, FileNotFoundError) as e:  # the input: a model, profile, setting, export
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # evaluate's loop, link or stand-in; this machine's disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.command} did not finish; run it again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
