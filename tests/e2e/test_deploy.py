"""deploy -> the robot runs episodes -> pull-data -> train -> deploy the new model, over a real sshd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from offboard.pull_data import pull_data
from offboard.remote import Remote, RemoteError
from onboard.fileio import sha256_file
from onboard.profile import ROOT, load_profile
from onboard.recorder import Recorder, read_manifest, verified_segments
from onboard.release import venv_path
from tests.conftest import terminal_signals


def offboard(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m offboard ...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "offboard", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def on_robot(profile_path: Path, command: str) -> subprocess.CompletedProcess:
    """A shell command on the loopback robot, through its ssh (what an operator would type)."""
    with Remote(load_profile(str(profile_path))) as remote:  # closes its ssh master and removes its socket folder
        return subprocess.run([*remote.ssh_args(), remote.target, command], capture_output=True, text=True, timeout=120)


def robot_status(profile_path: Path) -> dict:
    out = offboard("robot-status", "--robot", str(profile_path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for_episodes(remote_dir: Path, count: int, timeout: float = 120) -> list[Path]:
    """The service's segments, once `count` are closed (it runs `episodes` per start, then exits 0)."""
    folder = remote_dir / "data" / "loopback"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        good, _ = verified_segments(folder) if (folder / "MANIFEST").exists() else ([], [])
        if len(good) >= count:
            return good
        time.sleep(0.2)
    log = remote_dir / "run" / "mpq-loopback.log"
    raise AssertionError(f"{count} segments did not appear: {log.read_text() if log.exists() else 'no log'}")


def wait_stopped(profile_path: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = robot_status(profile_path)
        if status["service"].startswith("exited"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"the service did not finish its episodes: {status}")


@pytest.mark.long
def test_deploy_run_pull_train_redeploy(loopback, make_q, tmp_path):
    """The whole path a robot engineer takes, against a real sshd on 127.0.0.1."""
    first_model, _ = make_q("pendulum", seed=1)
    profile = loopback(model=str(first_model))
    remote_dir = tmp_path / "robot"

    out = offboard("deploy", "--robot", str(profile))
    assert out.returncode == 0, out.stdout + out.stderr
    first = (remote_dir / "current").resolve().name
    assert f"release {first} is current" in out.stdout
    first_sha = sha256_file(first_model)
    assert f"sha256 {first_sha}" in out.stdout  # the staged selfcheck on the robot verified this model

    # The service ran its episodes against the robot-side stand-in, logging outside the release.
    segments = wait_for_episodes(remote_dir, 3)
    status = wait_stopped(profile)
    assert status["current"] == first and status["model_sha256"] == first_sha
    assert "last exit 0" in status["service"]

    # pull-data: every segment arrives and verifies; a second pull copies nothing.
    data = tmp_path / "data"
    out = offboard("pull-data", "--robot", str(profile), "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert f"pulled {len(segments)} new segment(s)" in out.stdout
    good, problems = verified_segments(data / "loopback")
    assert [p.name for p in good] == [p.name for p in segments] and problems == []
    again = offboard("pull-data", "--robot", str(profile), "--data-dir", str(data))
    assert again.returncode == 0 and "pulled 0 new segment(s)" in again.stdout, again.stdout + again.stderr

    # One offboard iteration on the pulled data, exported as the next model.
    new_model = tmp_path / "trained" / "q.onnx"
    out = offboard(
        "train",
        "--task",
        "pendulum",
        "--data",
        str(data / "loopback"),
        "--iterations",
        "1",
        "--updates-per-iteration",
        "20",
        "--out",
        str(tmp_path / "runs"),
        "--model",
        str(new_model),
    )
    assert out.returncode == 0, out.stderr
    assert "iteration 1: loss" in out.stdout and "MPQ 1:" not in out.stderr  # piped: a line, not a progress bar
    new_sha = sha256_file(new_model)
    assert new_sha != first_sha

    out = offboard("deploy", "--robot", str(profile), "--model", str(new_model))
    assert out.returncode == 0, out.stdout + out.stderr
    second = (remote_dir / "current").resolve().name
    assert second != first
    check = on_robot(
        profile,
        f"cd {remote_dir}/current && {load_profile(str(profile)).deploy.python} -c 'import sys' && "
        f"{venv_python(remote_dir)} -m onboard selfcheck --robot robots/loopback.toml",
    )
    assert check.returncode == 0, check.stderr
    assert f"sha256 {new_sha}" in check.stdout

    # The new release's episodes land beside the old ones (the log folder outlives releases), numbered on.
    segments = wait_for_episodes(remote_dir, 6)
    assert [p.name for p in segments] == [f"{i:06d}.mcap" for i in range(1, 7)]

    # Rollback returns to the first release and its model.
    out = offboard("rollback", "--robot", str(profile))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (remote_dir / "current").resolve().name == first
    assert robot_status(profile)["model_sha256"] == first_sha


def venv_python(remote_dir: Path) -> str:
    """The python of the venv the current release uses (onboard.release picks it)."""
    return str(venv_path(remote_dir, remote_dir / "current") / "bin" / "python")


def deployed(profile_path: Path) -> str:
    out = offboard("deploy", "--robot", str(profile_path))
    assert out.returncode == 0, out.stdout + out.stderr
    return load_profile(str(profile_path)).deploy.remote_dir


@pytest.mark.timing
def test_interrupted_deploy_leaves_the_old_release_current_and_running(loopback, tmp_path):
    profile = loopback(episodes=0, mode="realtime")  # the service runs until stopped
    remote_dir = Path(deployed(profile))
    old = (remote_dir / "current").resolve().name
    assert robot_status(profile)["service"].startswith("running")

    deploy = subprocess.Popen(
        [sys.executable, "-m", "offboard", "deploy", "--robot", str(profile)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=terminal_signals,
    )
    for line in deploy.stdout:  # interrupt it (as Ctrl-C does) while the release is still being staged
        if line.startswith("staging"):
            os.killpg(deploy.pid, signal.SIGINT)
            break
    deploy.wait(timeout=60)
    assert deploy.returncode != 0
    time.sleep(1.0)  # a stage step the interrupt did not reach would finish here; it must not switch
    assert (remote_dir / "current").resolve().name == old
    status = robot_status(profile)
    assert status["current"] == old and status["service"].startswith("running"), status

    # The next deploy clears what the interrupted one left and goes through.
    out = offboard("deploy", "--robot", str(profile))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (remote_dir / "current").resolve().name != old
    assert not list((remote_dir / "releases").glob("*.partial"))
    stop = on_robot(profile, f"cd {remote_dir}/current && python3 -m onboard.service stop --dir {remote_dir}")
    assert stop.returncode == 0, stop.stderr
    # SIGTERM from the service's stop closed the open segment: every segment verifies, none is left partial.
    good, problems = verified_segments(remote_dir / "data" / "loopback")
    assert good and problems == [] and not list((remote_dir / "data" / "loopback").glob("*.partial"))


@pytest.mark.timing
def test_a_release_that_fails_to_start_puts_the_previous_one_back(loopback, tmp_path):
    profile = loopback(episodes=0, mode="realtime")
    remote_dir = Path(deployed(profile))
    old = (remote_dir / "current").resolve().name
    broken = loopback(episodes=0, mode="realtime", serial="/dev/ttyMPQ-no-such-port")  # passes the offline check
    out = offboard("deploy", "--robot", str(broken))
    assert out.returncode == 1
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and "failed to start" in error[0] and f"back on {old}" in error[0], out.stderr
    status = robot_status(profile)
    assert status["current"] == old and status["service"].startswith("running"), status
    on_robot(profile, f"cd {remote_dir}/current && python3 -m onboard.service stop --dir {remote_dir}")


def test_a_model_tampered_with_on_the_robot_is_refused_by_selfcheck(loopback, make_q, tmp_path):
    model, _ = make_q("pendulum", seed=2)
    profile = loopback(model=str(model))
    remote_dir = Path(deployed(profile))
    onnx = remote_dir / "current" / "models" / "pendulum" / "q.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    onnx.write_bytes(bytes(data))
    check = on_robot(
        profile,
        f"cd {remote_dir}/current && {venv_python(remote_dir)} -m onboard selfcheck --robot robots/loopback.toml",
    )
    assert check.returncode == 2
    assert "sha256" in check.stderr and len(check.stderr.strip().splitlines()) == 1, check.stderr


def processes_naming(path: Path) -> list[str]:
    """The command lines of this machine's processes that name `path` (a pull's rsync and its ssh)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(path).encode() in cmdline.read_bytes():
                found.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.parametrize("how", ["Ctrl-C", "kill", "closed terminal"])
def test_pull_interrupted_midway_completes_and_verifies_next_time(loopback, tmp_path, how):
    """Ctrl-C reaches the terminal's process group; a `kill` (SIGTERM) or a closed terminal (SIGHUP) only the pull:
    either way its rsync, in a session of its own, stops with it and keeps the cut file."""
    profile_path, profile, robot_data = robot_holding_segments(loopback, tmp_path, large=True)
    total = sum(p.stat().st_size for p in robot_data.glob("*.mcap"))
    data = tmp_path / "data"
    pull = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "offboard",
            "pull-data",
            "--robot",
            str(profile_path),
            "--data-dir",
            str(data),
            "--bwlimit",
            str(max(1, total // 1024 // 8)),
        ],  # about 8 s at this limit
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=terminal_signals,
    )
    partial_dir = data / "loopback" / ".incoming" / "partial"
    deadline = time.monotonic() + 30
    while not list((data / "loopback").glob(".0*")):  # rsync's temporary file: a segment is in flight
        assert time.monotonic() < deadline and pull.poll() is None, "the pull never started copying"
        time.sleep(0.02)
    time.sleep(1.0)
    if how == "Ctrl-C":  # midway through a segment
        os.killpg(pull.pid, signal.SIGINT)
    else:
        os.kill(pull.pid, signal.SIGTERM if how == "kill" else signal.SIGHUP)
    pull.wait(timeout=30)
    assert pull.returncode == 130 and "interrupted: run pull-data again" in pull.stderr.read()
    assert processes_naming(data) == []  # no rsync left copying into the folder
    arrived = sorted(p.name for p in (data / "loopback").glob("*.mcap"))
    # The pull returned after rsync's receiver, a process of its own, moved the cut file into the partial folder.
    assert len(arrived) < 4 and partial_dir.is_dir() and list(partial_dir.iterdir()), "the pull was not cut midway"
    # What arrived is whole; the cut segment waits in rsync's partial folder, not passed off as complete.
    for name in arrived:
        assert sha256_file(data / "loopback" / name) == sha256_file(robot_data / name)

    report = pull_data(profile, data)
    assert report.problems == [] and report.verified == 4
    assert sorted(report.transferred) == sorted(set(f"{i:06d}.mcap" for i in range(1, 5)) - set(arrived))
    for entry in read_manifest(data / "loopback"):
        assert sha256_file(data / "loopback" / entry["segment"]) == entry["sha256"]
    assert pull_data(profile, data).transferred == []  # idempotent


def test_pull_lists_a_damaged_segment_and_prune_deletes_only_verified(loopback, tmp_path):
    profile_path, profile, robot_data = robot_holding_segments(loopback, tmp_path)
    damaged = robot_data / "000002.mcap"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))

    out = offboard("pull-data", "--robot", str(profile_path), "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 1
    assert "kept out of training" in out.stderr and "000002.mcap" in out.stderr
    good, _ = verified_segments(tmp_path / "data" / "loopback")
    assert [p.name for p in good] == ["000001.mcap", "000003.mcap", "000004.mcap"]
    assert (tmp_path / "data" / "loopback" / "rejected" / "000002.mcap").exists()

    report = pull_data(profile, tmp_path / "data", prune=True)
    assert report.pruned == ["000001.mcap", "000003.mcap", "000004.mcap"]
    assert sorted(p.name for p in robot_data.glob("*.mcap")) == ["000002.mcap"]  # the unverified one stays
    assert (robot_data / "MANIFEST").exists()


def test_wrong_host_key_and_missing_identity_give_one_clear_line(loopback, tmp_path, sshd):
    port, keys = sshd
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    out = offboard("deploy", "--robot", str(loopback(known_hosts_file=str(wrong))))
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert "host key of 127.0.0.1" in line and "does not match" in line and "ssh-keygen -R" in line

    unknown = tmp_path / "known_hosts_empty"
    unknown.write_text("")
    out = offboard("pull-data", "--robot", str(loopback(known_hosts_file=str(unknown))))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "is not in" in line and "connect once by hand" in line

    out = offboard("deploy", "--robot", str(loopback(identity_file=str(tmp_path / "no_such_key"))))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "identity file" in line and "not found" in line and "ssh-keygen" in line
    assert not (tmp_path / "robot").exists()  # nothing happened on the robot


def test_preflight_refuses_a_model_for_another_task_before_touching_the_robot(loopback, make_q, tmp_path):
    model, _ = make_q("cartpole", seed=0)
    out = offboard("deploy", "--robot", str(loopback(model=str(model))))
    assert out.returncode == 2  # bad input, as the README says: before anything connects
    (line,) = out.stderr.strip().splitlines()
    assert "refusing to deploy" in line and "cartpole" in line
    assert not (tmp_path / "robot").exists()
    try:
        pull_data(load_profile(str(loopback(host=""))), tmp_path / "data")
    except RemoteError as e:
        assert "has no host" in str(e)
    else:
        raise AssertionError("a profile without host was pulled from")


def robot_holding_segments(loopback, tmp_path: Path, large: bool = False):
    """(profile path, profile, the robot's log folder) of a loopback robot that recorded four episodes; large:
    four segments of about 300 kB instead (a pull at a low --bwlimit is still copying one a second in)."""
    profile_path = loopback()
    profile = load_profile(str(profile_path))
    robot_data = Path(profile.deploy.remote_dir) / "data" / "loopback"
    robot_data.parent.mkdir(parents=True)
    if large:
        large_segments(robot_data)
    else:
        shutil.copytree(recorded_segments(tmp_path), robot_data)
    return profile_path, profile, robot_data


def large_segments(folder: Path, count: int = 4) -> None:
    """`count` closed segments of random states (little for zstd to take out), by the recorder a robot uses."""
    rng = np.random.default_rng(0)
    recorder = Recorder(folder.parent, folder.name)
    for episode in range(1, count + 1):
        recorder.start_episode(episode, dict(task="pendulum", robot=folder.name))
        for t in range(1000):
            recorder.write("/transition", dict(t=t, state=rng.random(30).tolist()))
        recorder.end_episode()
    recorder.close()


def recorded_segments(tmp_path: Path) -> Path:
    """Four closed segments of a local lockstep run (the loop and recorder a robot uses)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "onboard",
            "run",
            "--robot",
            "sim",
            "--episodes",
            "4",
            "--quiet",
            "--log-dir",
            str(tmp_path / "local"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "local" / "sim"
    (folder / "standin.log").unlink(missing_ok=True)
    return folder


def test_a_reset_robot_log_never_overwrites_what_was_pulled_and_pruned_segments_do_not_break_a_pull(loopback, tmp_path):
    profile_path, profile, robot_data = robot_holding_segments(loopback, tmp_path)
    data = tmp_path / "data"
    first = pull_data(profile, data, prune=True)
    assert first.verified == 4 and len(first.pruned) == 4 and first.problems == []
    kept = {p.name: sha256_file(p) for p in (data / "loopback").glob("*.mcap")}

    # Into a fresh folder: the robot still lists the pruned segments; the pull says so and goes on.
    fresh = pull_data(profile, tmp_path / "elsewhere")
    assert fresh.problems == [] and fresh.verified == 0 and len(fresh.gone) == 4

    # The robot's log folder is reset and records again: the same names, other segments.
    shutil.rmtree(robot_data)
    shutil.copytree(recorded_segments(tmp_path / "second"), robot_data)
    clash = pull_data(profile, data)
    assert len(clash.problems) == 4 and all("different segment under this name" in p for p in clash.problems)
    assert {p.name: sha256_file(p) for p in (data / "loopback").glob("*.mcap")} == kept  # nothing overwritten


def test_a_manifest_line_being_written_is_left_for_the_next_pull_and_a_damaged_one_is_one_line(loopback, tmp_path):
    profile_path, profile, robot_data = robot_holding_segments(loopback, tmp_path)
    manifest = robot_data / "MANIFEST"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:3]) + lines[3][:20])  # the recorder is appending the 4th line
    report = pull_data(profile, tmp_path / "data")
    assert report.verified == 3 and report.problems == []
    manifest.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]))
    out = offboard("pull-data", "--robot", str(profile_path), "--data-dir", str(tmp_path / "data"))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "the robot's" in line and "MANIFEST:3 is not a segment entry" in line
    assert "nothing was imported" in line and "delete that line" in line


@pytest.mark.timing
def test_a_service_the_robot_cannot_run_is_refused_before_the_running_one_stops(loopback, tmp_path):
    profile = loopback(episodes=0, mode="realtime")
    remote_dir = Path(deployed(profile))
    old = (remote_dir / "current").resolve().name
    out = offboard("deploy", "--robot", str(loopback(episodes=0, mode="realtime", service="systemd")))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "systemd does not run here" in line
    status = robot_status(profile)
    assert status["current"] == old and status["service"].startswith("running"), status
    on_robot(profile, f"cd {remote_dir}/current && python3 -m onboard.service stop --dir {remote_dir}")


def test_a_second_deploy_while_one_runs_is_refused_in_one_line(loopback, tmp_path):
    import fcntl

    profile = loopback()
    remote_dir = tmp_path / "robot"
    remote_dir.mkdir()
    with open(remote_dir / ".deploy-session.lock", "w") as held:  # a deploy in progress holds this
        fcntl.flock(held, fcntl.LOCK_EX)
        (remote_dir / "releases").mkdir()
        (remote_dir / "releases" / "20261126-000000-abc-nomodel.partial").mkdir()  # the one being staged
        out = offboard("deploy", "--robot", str(profile))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "another deploy to loopback is running" in line
    assert (remote_dir / "releases" / "20261126-000000-abc-nomodel.partial").is_dir()  # its staging untouched


def test_several_robots_are_pulled_at_once_into_their_own_folders_and_train_as_one_dataset(loopback, tmp_path):
    profile_path, profile, robot_data = robot_holding_segments(loopback, tmp_path)
    settings = tomllib.loads(profile_path.read_text())
    second = profile_path.with_name("arm_b.toml")  # a second robot on the same host: its own log folder
    second.write_text(tomli_w.dumps({**settings, "name": "arm_b"}))
    shutil.copytree(recorded_segments(tmp_path / "b"), robot_data.parent / "arm_b")
    unreachable = profile_path.with_name("arm_c.toml")  # nothing listens on its port
    unreachable.write_text(
        tomli_w.dumps({**settings, "name": "arm_c", "deploy": {**settings["deploy"], "ssh_port": 9}})
    )
    data = tmp_path / "data"

    out = offboard("pull-data", "--robot", str(profile_path), str(second), str(unreachable), "--data-dir", str(data))
    assert out.returncode == 1  # one robot could not be pulled: said in one line, the others were
    assert f"loopback: pulled 4 new segment(s) into {data / 'loopback'}; 4 verified" in out.stdout, out.stdout
    assert f"arm_b: pulled 4 new segment(s) into {data / 'arm_b'}; 4 verified" in out.stdout
    (error,) = out.stderr.strip().splitlines()
    assert error.startswith("error: arm_c: ") and not (data / "arm_c").exists()
    for robot in ("loopback", "arm_b"):
        good, problems = verified_segments(data / robot)
        assert len(good) == 4 and problems == []

    # Training reads both robots' folders as one dataset; each segment says which robot and Q recorded it.
    from offboard.mpq import Config, Trainer

    config = Config(data=(str(data / "loopback"), str(data / "arm_b")), out=str(tmp_path / "runs"), torch_threads=1)
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    try:
        trainer.load()
    finally:
        trainer.close()
    listed = trainer.buffer.segments
    assert len(listed) == 8 and {Path(s["segment"]).parent.name for s in listed} == {"loopback", "arm_b"}
    assert {s["robot"] for s in listed} == {"sim"} and all(s["model_sha256"] is None for s in listed)  # no Q yet
    twice = offboard("pull-data", "--robot", str(profile_path), str(profile_path), "--data-dir", str(data))
    assert twice.returncode == 2 and twice.stderr.startswith("error: --robot: loopback given twice;"), twice.stderr
