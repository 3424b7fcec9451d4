"""export-minari: a robot's verified segments as a Minari dataset, loaded back and held to the MCAP."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.fixture(scope="module")
def two_episodes(tmp_path_factory):
    """The sim robot's log folder after two episodes through the loop, recorded once for the module's tests."""
    from onboard.loop import run
    from onboard.profile import load_profile

    data = tmp_path_factory.mktemp("recorded")
    run(load_profile("sim", log_dir=str(data)), 2, show_status=False)
    return data / "sim"


def sim_logs(two_episodes, tmp_path):
    """A test's own copy of the two episodes, as tmp_path/data/sim."""
    shutil.copytree(two_episodes, tmp_path / "data" / "sim")
    return tmp_path / "data" / "sim"


def test_a_robots_segments_export_to_minari_and_load_back_as_recorded(tmp_path, minari_home, capsys, two_episodes):
    """Two episodes of the sim robot through the loop; the export, loaded with minari.load_dataset, holds
    exactly the logged observations, applied actions and minus the costs, with each segment's metadata."""
    import minari

    from offboard.__main__ import main
    from onboard.recorder import read_segment, verified_segments
    from onboard.tasks import get_task

    folder = sim_logs(two_episodes, tmp_path)
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/sim-v0"]) == 0
    assert "exported 2 episode(s) (400 steps)" in capsys.readouterr().out
    dataset = minari.load_dataset("mpq/pendulum/sim-v0")
    segments, _ = verified_segments(folder)
    task = get_task("pendulum")
    metadata = list(dataset.storage.get_episode_metadata(range(2)))
    for episode, path, meta in zip(dataset.iterate_episodes(), segments, metadata, strict=True):
        recorded, topics = read_segment(path)
        steps = topics["/transition"]
        np.testing.assert_array_equal(episode.observations[:-1], [s["obs"] for s in steps])
        np.testing.assert_allclose(episode.observations[-1], task.obs(np.array(steps[-1]["next_state"])))
        np.testing.assert_array_equal(episode.actions, np.array([s["action"] for s in steps], dtype=np.float32))
        np.testing.assert_array_equal(episode.rewards, [-s["cost"] for s in steps])
        assert not episode.terminations.any() and episode.truncations[-1] and not episode.truncations[:-1].any()
        assert meta["segment"] == f"sim/{path.name}" and meta["robot"] == "sim"
        assert meta["mppi"] and meta["task"] == "pendulum" and meta["episode"] == recorded["segment"]["episode"]
        assert meta["mode"] == "lockstep" and not meta["interrupted"] and not meta["recovered"]
    assert dataset.spec.env_spec.id == "mpq/Pendulum-v0"
    # the same name again: refused, the dataset untouched
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/sim-v0"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert minari.load_dataset("mpq/pendulum/sim-v0").total_episodes == 2


def test_a_segment_that_fails_its_check_is_never_exported(tmp_path, minari_home, capsys, two_episodes):
    import minari

    from offboard.__main__ import main

    folder = sim_logs(two_episodes, tmp_path)
    damaged = sorted(folder.glob("*.mcap"))[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/damaged-v0"]) == 0
    captured = capsys.readouterr()
    assert "exported 1 episode(s)" in captured.out and f"left out: {damaged}" in captured.err
    assert minari.load_dataset("mpq/pendulum/damaged-v0").total_episodes == 1
    assert main(["export-minari", "--data", str(tmp_path / "nothing"), "--name", "mpq/pendulum/none-v0"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # the folder above the robots' folders: the fix names one of them
    assert main(["export-minari", "--data", str(tmp_path / "data"), "--name", "mpq/pendulum/none-v0"]) == 2
    assert f"give a robot's log folder, e.g. --data {folder}" in capsys.readouterr().err
    # an episode a crash cut short, not yet recovered, is named as left out
    (folder / "000009.mcap.partial").write_bytes(b"\x89MCAP0\r\n")
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/partial-v0"]) == 0
    assert "000009.mcap.partial: an episode still recording, or cut short by a crash" in capsys.readouterr().err


def test_a_folder_of_two_tasks_exports_the_one_given_by_task_and_each_segment_once(tmp_path, minari_home, capsys):
    """The sim robot's folder holds whatever tasks were run on it; --task picks one (the rest named as left out),
    and a folder given twice is read once."""
    import minari

    from offboard.__main__ import main
    from onboard.loop import run
    from onboard.profile import load_profile

    run(load_profile("sim", log_dir=str(tmp_path / "data")), 1, show_status=False)
    run(load_profile("sim", task="cartpole", log_dir=str(tmp_path / "data")), 1, show_status=False)
    folder = str(tmp_path / "data" / "sim")
    assert main(["export-minari", "--data", folder, "--name", "mpq/both-v0"]) == 2
    assert "several tasks (cartpole, pendulum): give --task to export one of them" in capsys.readouterr().err
    assert main(["export-minari", "--data", folder, folder, "--name", "mpq/cartpole-v0", "--task", "cartpole"]) == 0
    captured = capsys.readouterr()
    assert "exported 1 episode(s)" in captured.out
    assert "000001.mcap: recorded for task 'pendulum', not 'cartpole'" in captured.err
    dataset = minari.load_dataset("mpq/cartpole-v0")
    assert dataset.total_episodes == 1 and dataset.spec.env_spec.id == "mpq/CartPole-v0"


@pytest.mark.parametrize(
    "name", ["badname", "mpq/pendulum/x y-v0", "../../escape-v0", "a/b-v0", "mpq/pendulum/sim", "mpq/sim-v0/in-v0"]
)
def test_a_malformed_name_is_one_line_and_leaves_minaris_store_as_it_was(
    tmp_path, minari_home, capsys, two_episodes, name
):
    import minari

    from offboard.__main__ import main

    sim_logs(two_episodes, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["export-minari", "--data", str(tmp_path / "data" / "sim"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --name {name}: use NAMESPACE/NAME-vN") and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not (tmp_path.parent / "escape-v0").exists()
    assert main(["export-minari", "--data", str(tmp_path / "data" / "sim"), "--name", "mpq/pendulum/after-v0"]) == 0
    assert list(minari.list_local_datasets()) == ["mpq/pendulum/after-v0"]  # the store still works


def test_a_minari_datasets_path_that_is_a_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, two_episodes):
    from offboard.__main__ import main

    sim_logs(two_episodes, tmp_path)
    (tmp_path / "a-file").write_text("keep me\n")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a-file"))
    assert main(["export-minari", "--data", str(tmp_path / "data" / "sim"), "--name", "mpq/pendulum/sim-v0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"datasets folder {tmp_path / 'a-file'} cannot be used" in err
    assert "set MINARI_DATASETS_PATH to a folder" in err and (tmp_path / "a-file").read_text() == "keep me\n"


def test_an_episode_the_loop_cut_short_is_truncated_never_terminated():
    """The tasks have no terminal states: an episode ended by a safe stop (a failsafe, missed deadlines) is
    truncated as a finished one is, its reason kept in the metadata (a termination would tell an offline learner
    that no cost follows)."""
    from pathlib import Path

    from offboard.minari_export import episode_buffer, episode_metadata
    from onboard.tasks import get_task

    task = get_task("pendulum")
    s = task.hanging_state().tolist()
    steps = [dict(obs=task.obs(np.array(s)).tolist(), action=[0.0], cost=9.0, next_state=s) for _ in range(3)]
    episode = dict(
        path=Path("sim/000001.mcap"),
        sha256="ab",
        transitions=steps,
        segment={},
        summary={"safe_stop": "plant failsafe", "interrupted": True},
        recovered=False,
    )
    buffer = episode_buffer(task, episode)
    assert list(buffer.terminations) == [False] * 3 and list(buffer.truncations) == [False, False, True]
    metadata = episode_metadata(episode)  # the truncation says no more than a time limit would: the metadata does
    assert metadata["safe_stop"] == "plant failsafe" and metadata["interrupted"] and not metadata["recovered"]
    recovered = episode_metadata(dict(episode, summary={}, recovered=True))  # rewritten after a crash
    assert recovered["interrupted"] and recovered["recovered"] and recovered["safe_stop"] == ""
