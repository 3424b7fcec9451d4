"""Bad input on `python -m offboard`: one `error:` line naming the problem and the fix; nothing trained or written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from offboard.__main__ import main
from offboard.export import load_checkpoint
from offboard.mpq import Config, QNetwork
from onboard.qfunction import OnnxQ
from onboard.recorder import Recorder
from onboard.tasks import get_task


@pytest.fixture(scope="module")
def tiny_logs(tmp_path_factory) -> Path:
    """Four verified five-step pendulum segments: enough for a training run of seconds."""
    folder = tmp_path_factory.mktemp("data") / "robot"
    for episode in range(1, 5):
        recorder = Recorder(folder.parent, folder.name)
        recorder.start_episode(episode, dict(task="pendulum", robot=folder.name))
        for t in range(5):
            step = dict(
                t=t, state=[0.0, 0.1 * t, 0.0], obs=[1.0, 0.0, 0.0], action=[0.5], cost=1.0, next_state=[0.0, 0.1, 0.0]
            )
            recorder.write("/transition", dict(step, done=t == 4))
        recorder.end_episode()
        recorder.close()
    return folder


@pytest.fixture(scope="module")
def checkpoint(tiny_logs, tmp_path_factory) -> Path:
    """A checkpoint written by a real (tiny) training run."""
    out = tmp_path_factory.mktemp("runs")
    model = out / "q.onnx"
    argv = ["train", "--data", str(tiny_logs), "--out", str(out), "--model", str(model), "--iterations", "1"]
    assert main([*argv, "--updates-per-iteration", "2"]) == 0 and model.is_file()
    (path,) = out.glob("*/checkpoint-001.pt")
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "args, says",
    [
        (["--iterations", "0"], "--iterations 0"),
        (["--iterations", "-1"], "--iterations -1"),
        (["--updates-per-iteration", "0"], "--updates-per-iteration 0"),
        (["--updates-per-iteration", "-5"], "--updates-per-iteration -5"),
        (["--buffer-window", "-1"], "--buffer-window -1"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--hidden", "100", "0"], "--hidden 100 0"),
        (["--td-lambda", "1.5"], "--td-lambda 1.5: use a number from 0 to 1"),
        (["--holdout-fraction", "1"], "--holdout-fraction 1.0"),
        (["--horizon", "0"], "--horizon 0"),
        (["--lr", "inf"], "--lr inf: use a step size above 0 and at most 1"),
        (["--lr", "nan"], "--lr nan"),
        (["--seed", "-1"], "--seed -1"),
        (["--model", ""], "--model is empty"),
        (["--task", "acrobot"], "unknown task 'acrobot'"),
        (["--model", "{tmp}/q.json"], "ends in .json"),
        (["--model", "{tmp}/a_folder"], "is a folder"),
        (["--model", "{tmp}/a_file/q.onnx"], "a_file is a file, not a folder"),
        (["--out", "{tmp}/a_file"], "a_file is a file, not a folder"),
        (["--data", "{tmp}/nonexistent"], "nonexistent does not exist"),
    ],
)
def test_bad_train_input_is_refused_before_anything_is_trained_or_written(tiny_logs, tmp_path, capsys, args, says):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("keep me\n")
    before = written(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    defaults = ["--data", str(tiny_logs), "--out", str(tmp_path / "runs"), "--model", str(tmp_path / "q.onnx")]
    assert main(["train", *defaults, "--updates-per-iteration", "2", *args]) == 2  # later options win over the defaults
    assert says in one_error_line(capsys)
    assert written(tmp_path) == before  # no run folder, no model, no .partial
    assert (tmp_path / "a_file").read_text() == "keep me\n"


def test_the_checkpoint_training_writes_exports_again(checkpoint, tmp_path, capsys):
    """The checkpoint loads as data only (weights_only) and exports."""
    assert main(["export", str(checkpoint), "--model", str(tmp_path / "q.onnx")]) == 0
    task = get_task("pendulum")
    q = OnnxQ(tmp_path / "q.onnx", task)  # loads onboard: q.json's sha256, dimensions and task checked
    net, _ = load_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(16, task.obs_dim)), rng.uniform(task.u_min, task.u_max, (16, task.act_dim))
    with torch.no_grad():
        expected = net(torch.tensor(obs, dtype=torch.float32), torch.tensor(act, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(q(obs, act), expected, rtol=1e-4, atol=1e-4)  # the checkpoint's Q, as trained


def bad_checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "text.pt").write_text("not a checkpoint\n")
    torch.save(dict(state_dict=QNetwork(3, 1).state_dict()), folder / "no_config.pt")
    other = dict(state_dict=QNetwork(5, 1).state_dict(), config=Config(task="pendulum").to_dict(), segments=[])
    torch.save(other, folder / "other_shape.pt")  # a cart-pole sized Q under a pendulum config
    (folder / "a_folder").mkdir()
    return {
        "truncated": (folder / "truncated.pt", "not a readable checkpoint"),
        "text": (folder / "text.pt", "not a readable checkpoint"),
        "no config": (folder / "no_config.pt", "not a training checkpoint"),
        "other shape": (folder / "other_shape.pt", "do not fit a pendulum Q"),
        "folder": (folder / "a_folder", "is a folder"),
        "missing": (folder / "missing.pt", "does not exist"),
    }


@pytest.mark.parametrize("case", ["truncated", "text", "no config", "other shape", "folder", "missing"])
def test_a_bad_checkpoint_is_one_line_naming_the_file(checkpoint, tmp_path, capsys, case):
    path, says = bad_checkpoints(tmp_path, checkpoint)[case]
    assert main(["export", str(path), "--model", str(tmp_path / "out" / "q.onnx")]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and says in line
    assert not (tmp_path / "out").exists()


def test_deploy_commands_name_the_profile_file_given_and_check_their_options(tmp_path, capsys):
    profile = tmp_path / "x" / "x.toml"
    profile.parent.mkdir()
    profile.write_text('task = "pendulum"\n')  # no host: runs here, not deployable
    for command in ("deploy", "pull-data", "robot-status", "rollback"):
        assert main([command, "--robot", str(profile)]) == 2
        line = one_error_line(capsys)
        assert f"no host in {profile}:" in line, line
    assert main(["deploy", "--robot", str(profile), "--model", ""]) == 2
    assert "--model is empty" in one_error_line(capsys)
    assert main(["pull-data", "--robot", str(profile), "--bwlimit", "-5", "--data-dir", str(tmp_path / "d")]) == 2
    assert "--bwlimit -5" in one_error_line(capsys)
    assert not (tmp_path / "d").exists()
    (tmp_path / "a-file").write_text("")
    assert main(["pull-data", "--robot", str(profile), "--data-dir", str(tmp_path / "a-file")]) == 2
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in one_error_line(capsys)  # before any connection


def test_deploy_without_ssh_on_the_workstation_says_what_to_install(tmp_path, capsys, monkeypatch):
    profile = tmp_path / "x.toml"
    profile.write_text('task = "pendulum"\n[deploy]\nhost = "127.0.0.1"\n')
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert main(["deploy", "--robot", str(profile)]) == 1
    assert (
        one_error_line(capsys)
        == "error: ssh is not installed on this workstation: apt-get install openssh-client rsync"
    )


def test_the_train_options_are_the_configs_fields_with_their_comments_as_help():
    """One declaration: each Config field is an option, typed by its annotation, helped by its comment."""
    import argparse
    import dataclasses

    from offboard.cli import add_options, given
    from offboard.mpq import Config

    parser = argparse.ArgumentParser()
    add_options(parser, Config)
    text = parser.format_help()
    for field in dataclasses.fields(Config):
        assert "--" + field.name.replace("_", "-") in text
    assert "M minibatches per iteration (default: 100)" in " ".join(text.split())
    parse = parser.parse_args
    assert given(parse(["--target-network"]), Config) == {"target_network": True}
    assert given(parse(["--target-network", "false", "--hidden", "8", "8"]), Config) == {
        "target_network": False,
        "hidden": [8, 8],
    }
    assert given(parse(["--data", "a", "--data", "b"]), Config) == {"data": ["a", "b"]}
    with pytest.raises(SystemExit):  # argparse's own refusal of a choice the Literal does not have
        parse(["--planner-model", "perfect"])


@pytest.mark.parametrize("command", [["train"], ["evaluate"], ["pull-data", "--robot", "sim"]])
def test_an_unknown_option_points_at_its_commands_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--nosuch"])
    assert done.value.code == 2
    assert one_error_line(capsys) == (
        f"error: unrecognized arguments: --nosuch (python -m offboard {command[0]} --help lists the options)"
    )


def test_several_robots_with_bad_settings_are_refused_before_any_is_pulled(tmp_path, capsys):
    robots = []
    for name in ("a", "b"):
        robots.append(tmp_path / f"{name}.toml")
        robots[-1].write_text(f'task = "pendulum"\nname = "{name}"\n')  # no host
    assert main(["pull-data", "--robot", *map(str, robots), "--data-dir", str(tmp_path / "d")]) == 2
    assert "robot 'a' has no host" in one_error_line(capsys)
    assert not (tmp_path / "d").exists()


def test_train_says_how_many_transitions_it_trained_on_and_how_many_it_held_out(tiny_logs, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_logs), "--out", str(tmp_path), "--model", str(tmp_path / "q.onnx")]
    assert main([*argv, "--iterations", "1", "--updates-per-iteration", "2"]) == 0
    line = capsys.readouterr().out.splitlines()[-2]
    trained, held_out = int(line.split()[2]), int(line.split("(on the other ")[1].split(")")[0])
    assert line.startswith(f"trained on {trained} of 20 transitions from 4 segments; ") and trained + held_out == 20
    assert held_out > 0
