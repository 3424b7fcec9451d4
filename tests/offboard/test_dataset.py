"""Robot logs into the replay buffer: a bad segment or MANIFEST line is one problem line, never a crash,
and never keeps the good segments beside it out of training."""

from __future__ import annotations

from pathlib import Path

import pytest

from offboard.dataset import DatasetError, load_replay_buffer
from onboard.recorder import Recorder, append_manifest
from onboard.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
PENDULUM = get_task("pendulum")
STEP = dict(state=[0.0, 0.1, 0.2], obs=[1.0, 0.0, 0.2], action=[0.5], cost=1.0, next_state=[0.05, 0.1, 0.2], done=False)


def write_segment(folder: Path, episode: int, steps: int = 20, **fields) -> Path:
    """A closed pendulum segment, listed in MANIFEST; `fields` replace (None: drop) those of each transition."""
    recorder = Recorder(folder.parent, folder.name)
    recorder.start_episode(episode, dict(task="pendulum", robot=folder.name))
    for t in range(steps):
        step = {k: v for k, v in dict(STEP, t=t, **fields).items() if v is not None}
        recorder.write("/transition", step)
    segment = recorder.end_episode()
    recorder.close()
    return segment


def test_a_listed_segment_cut_short_is_left_out_and_the_others_still_train(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    second = write_segment(folder, 2)
    write_segment(folder, 3)
    manifest = folder / "MANIFEST"
    manifest.write_text(
        "".join(line for line in manifest.read_text().splitlines(keepends=True) if "000002" not in line)
    )
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    append_manifest(folder, second, recovered=True)  # as an older recorder listed it: its sha256 matches

    buffer, problems = load_replay_buffer([folder], PENDULUM)
    assert [Path(s["segment"]).name for s in buffer.segments] == ["000001.mcap", "000003.mcap"] and len(buffer) == 40
    (problem,) = problems
    assert problem == f"{second}: not a complete segment (cut short or damaged: EndOfFile)"  # named once, and why


def test_transitions_missing_a_field_are_left_out(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    write_segment(folder, 2, cost=None)
    buffer, problems = load_replay_buffer([folder], PENDULUM)
    assert len(buffer) == 20 and len(problems) == 1 and "000002.mcap" in problems[0] and "missing" in problems[0]


def test_a_bad_manifest_line_leaves_out_its_folder_with_the_fix_and_other_folders_still_train(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_segment(good, 1)
    write_segment(bad, 1)
    (good / "MANIFEST").write_text((good / "MANIFEST").read_text() + "\n\n")  # blank lines are nothing wrong
    (bad / "MANIFEST").write_text((bad / "MANIFEST").read_text() + '{"sha256": "x"}\n')
    buffer, problems = load_replay_buffer([good, bad], PENDULUM)
    assert len(buffer) == 20 and len(problems) == 1
    assert f"{bad / 'MANIFEST'}:2 is not a segment entry" in problems[0] and "fix: delete that line" in problems[0]
    with pytest.raises(DatasetError, match=r"MANIFEST:2 is not a segment entry .*fix: delete that line"):
        load_replay_buffer([bad], PENDULUM)


def test_train_on_a_manifest_line_that_is_not_an_entry_is_one_error_line(tmp_path, capsys, monkeypatch):
    from offboard.__main__ import main  # `python -m offboard`, in this process

    folder = tmp_path / "robot"
    write_segment(folder, 1)
    (folder / "MANIFEST").write_text("1\n" + (folder / "MANIFEST").read_text())
    monkeypatch.chdir(ROOT)
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MANIFEST:1 is not a segment entry ('1')" in err and "fix: delete that line" in err
