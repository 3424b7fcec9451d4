"""The onboard runtime end to end: the sim profile's stand-in, the loop, and the recorder's segments."""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import tomli_w

from firmware_bridge.dialect import mavlink
from firmware_bridge.link import Link, LinkError
from onboard.loop import LoopError, make_planner, run
from onboard.mppi import MPPIConfig
from onboard.profile import load_profile
from onboard.recorder import CHANNELS, Recorder, iter_transitions, read_manifest, read_segment, verified_segments
from onboard.scheduling import realtime_refusal
from onboard.tasks import get_task
from tests.conftest import terminal_signals
from tests.firmware_bridge.test_link_states import plant_state

ROOT = Path(__file__).resolve().parents[2]


def onboard_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "onboard", *args], capture_output=True, text=True, cwd=ROOT, **kwargs)


def onboard_main(capsys, *args) -> tuple[int, str]:
    """`python -m onboard ...` in this process, for refusals made before any process starts (a second faster than a
    new interpreter each): its exit code and stderr. The signal handlers a run sets are put back."""
    from onboard.__main__ import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, capsys.readouterr().err


def closed(schema: dict) -> dict:
    """The schema with no field beyond those it lists (a field the loop writes must be declared for Foxglove)."""
    if schema.get("type") != "object":
        return schema
    return {
        **schema,
        "additionalProperties": False,
        "properties": {k: closed(v) for k, v in schema["properties"].items()},
    }


def test_two_lockstep_episodes_leave_verified_segments_that_chain(tmp_path):
    profile = load_profile("sim", log_dir=str(tmp_path))
    stats = run(profile, episodes=2, show_status=False)
    assert stats.episodes == 2 and stats.steps == 400
    segments, problems = verified_segments(tmp_path / "sim")
    assert problems == [] and [s.name for s in segments] == ["000001.mcap", "000002.mcap"]
    transitions = list(iter_transitions(tmp_path / "sim"))
    assert len(transitions) == 2 * get_task("pendulum").episode_steps
    for segment in segments:
        metadata, topics = read_segment(segment)
        steps = topics["/transition"]
        for before, after in zip(steps, steps[1:], strict=False):
            assert before["next_state"] == after["state"]  # s' of step t is s of step t+1
        assert [s["done"] for s in steps].count(True) == 1 and steps[-1]["done"]
        assert len(topics["/mppi"]) == len(topics["/link"]) == 200
        # the plant's own counters reach the log as its statuses arrive (the host-to-plant direction's faults)
        assert {"crc_errors", "commands_applied", "signature_errors"} <= set(topics["/link"][-1]["plant"])
        assert metadata["summary"]["plant"]["commands_applied"] == 200 * int(segment.stem)  # final, at disarm
        for topic, messages in topics.items():  # every message as its channel's schema says, every field written
            validator = jsonschema.validators.validator_for(CHANNELS[topic])(closed(CHANNELS[topic]))
            validator.check_schema(validator.schema)  # once: jsonschema.validate checks it for every message
            for message in messages:
                validator.validate(message)
            assert set().union(*messages) == set(CHANNELS[topic]["properties"]), topic
        meta = metadata["segment"]
        assert meta["task"] == "pendulum" and meta["robot"] == "sim" and meta["mppi"]["K"] == 24
        assert {"model_sha256", "code_version", "start_time"} <= set(meta)
    assert not list((tmp_path / "sim").glob("*.partial"))


def start_run_into_episode_2(tmp_path, min_bytes: int):
    """`onboard run` in its own process, returned once episode 2's partial segment has `min_bytes`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "onboard", "run", "--episodes", "5", "--log-dir", str(tmp_path), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=terminal_signals,
    )
    partial = tmp_path / "sim" / "000002.mcap.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > min_bytes) and time.monotonic() < deadline:
        time.sleep(0.01)
    return process, partial


def test_kill_9_mid_episode_keeps_earlier_segments_and_recovers_the_partial_one(tmp_path):
    process, partial = start_run_into_episode_2(tmp_path, 20_000)
    logs = tmp_path / "sim"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists(), "the run never reached the middle of episode 2"
    segments, problems = verified_segments(logs)
    assert [s.name for s in segments] == ["000001.mcap"] and problems == []

    recorder = Recorder(tmp_path, "sim")  # the next start recovers what the crash left
    assert [p.name for p in recorder.recovered] == ["000002.mcap"]
    entries = read_manifest(logs)
    assert entries[-1]["segment"] == "000002.mcap" and entries[-1]["recovered"] is True
    segments, problems = verified_segments(logs)
    assert len(segments) == 2 and problems == []
    metadata, topics = read_segment(logs / "000002.mcap")
    assert 0 < len(topics["/transition"]) < 200 and metadata["recovery"]["recovered_from"] == partial.name


def test_an_unreadable_partial_is_quarantined_not_lost(tmp_path):
    logs = tmp_path / "sim"
    logs.mkdir()
    (logs / "000009.mcap.partial").write_bytes(b"\x89MCAP0\r\n" + os.urandom(50))
    Recorder(tmp_path, "sim")
    assert (logs / "quarantine" / "000009.mcap.partial").exists()
    assert verified_segments(logs) == ([], [])


def test_a_segment_changed_after_closing_is_reported_and_not_read(tmp_path):
    profile = load_profile("sim", log_dir=str(tmp_path))
    run(profile, episodes=1, show_status=False)
    segment = tmp_path / "sim" / "000001.mcap"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    good, problems = verified_segments(tmp_path / "sim")
    assert good == [] and "sha256 does not match MANIFEST" in problems[0]
    with pytest.raises(ValueError, match="sha256 does not match"):
        list(iter_transitions(tmp_path / "sim"))


class SlowPlanner:
    """The profile's planner, made to miss every realtime deadline after a few good steps."""

    def __init__(self, planner, good_steps: int, delay: float):
        self.planner, self.good_steps, self.delay, self.calls = planner, good_steps, delay, 0
        self.means = []  # the warm-start mean before each plan

    def __getattr__(self, name):
        return getattr(self.planner, name)

    def propose(self, state):
        self.calls += 1
        self.means.append(self.planner.mean.copy())
        if self.calls > self.good_steps:
            time.sleep(self.delay)
        return self.planner.propose(state)


@pytest.mark.timing
def test_realtime_deadline_misses_fall_back_to_the_previous_plan_then_stop_safely(tmp_path):
    profile = load_profile("sim", log_dir=str(tmp_path), mode="realtime")
    task = get_task("pendulum")
    slow = SlowPlanner(make_planner(profile, task), good_steps=10, delay=1.5 * task.dt)
    with pytest.raises(LoopError, match="5 planning deadlines missed in a row"):
        run(profile, episodes=1, planner=slow, show_status=False)
    (segment,), problems = verified_segments(tmp_path / "sim")
    assert problems == []
    metadata, topics = read_segment(segment)
    missed = [m["deadline_missed"] for m in topics["/mppi"]]
    # the slow plans missed (a good one may miss too on a loaded machine; that is timing, not asserted here)
    assert len(missed) == 15 and missed[10:] == [True] * 5
    transitions = topics["/transition"]
    commanded = [t["commanded"] for t in transitions]
    for step in range(10, 15):  # each fallback is the next action of the previous, shifted plan
        np.testing.assert_allclose(commanded[step], slow.means[step][0])
    # what the plant applied: this step's command, or (a late plan) one it held from before, as float32 went out
    sent = [np.float32(c).tolist() for c in commanded]
    for step, t in enumerate(transitions):
        if t["held"]:  # a command sent before (or the safe zero before the first)
            assert t["action"] in [*sent[:step], [0]]
        else:
            assert t["action"] == sent[step]
    assert any(t["held"] for t in transitions[10:])  # late plans: the plant held older commands
    assert metadata["summary"]["safe_stop"] == "deadline misses"
    assert metadata["summary"]["error"].startswith("stopped: 5 planning deadlines missed in a row")
    assert metadata["summary"]["plant"]["commands_applied"] >= 10 and "crc_errors" in metadata["summary"]["link"]


@pytest.mark.timing
@pytest.mark.parametrize("rearm", [True, False])
def test_a_watchdog_trip_between_episodes_is_rearmed_where_allowed_or_stops_the_run_in_one_line(
    tmp_path, monkeypatch, rearm
):
    """The first episode's disarm is lost on the wire for longer than the watchdog (held back here): the plant,
    still armed, latches MPQ_FAILSAFE_WATCHDOG after the episode's last step, and the next episode's arm meets it."""
    profile = load_profile(
        "sim", log_dir=str(tmp_path), mode="realtime", standin=dict(period=0.02), rearm_after_watchdog=rearm
    )
    disarm, held_back = Link.disarm, []

    def late_disarm(link, timeout=2.0):
        if not held_back:
            held_back.append(True)
            time.sleep(0.3)  # 15 periods: the watchdog's 3 pass without a command
        disarm(link, timeout)

    monkeypatch.setattr(Link, "disarm", late_disarm)
    if rearm:
        stats = run(profile, episodes=2, show_status=False)
        assert stats.episodes == 2
    else:
        with pytest.raises(LinkError, match="did not arm: failsafe MPQ_FAILSAFE_WATCHDOG latched"):
            run(profile, episodes=2, show_status=False)
    (first, second), problems = verified_segments(tmp_path / "sim")
    assert problems == [] and "error" not in read_segment(first)[0]["summary"]
    metadata, topics = read_segment(second)
    if rearm:  # the trip came after the first episode's last state: the second episode's plant counted it
        assert "error" not in metadata["summary"] and len(topics["/transition"]) == get_task("pendulum").episode_steps
        assert metadata["summary"]["plant"]["watchdog_trips"] >= 1 and metadata["summary"]["rearms_at_arm"] == 1
    else:  # the second episode's segment says why it never ran
        assert "failsafe MPQ_FAILSAFE_WATCHDOG latched" in metadata["summary"]["error"]
        assert topics.get("/transition", []) == []


class CallLog:
    """The profile's planner, noting when the loop warms it up and when it plans a control step."""

    def __init__(self, planner):
        self.planner, self.calls = planner, []

    def __getattr__(self, name):
        return getattr(self.planner, name)

    def warm_up(self, states):
        self.calls.append("W")
        self.planner.warm_up(states)

    def propose(self, state):
        self.calls.append("p")
        return self.planner.propose(state)


def test_each_episode_warms_the_planner_up_before_arming(tmp_path, monkeypatch):
    """A plan's first runs compile kernels and, on the GPU, capture CUDA graphs: done before the plant is
    armed (and its watchdog runs), so no control step pays for it."""
    profile = load_profile("sim", log_dir=str(tmp_path))
    task = get_task("pendulum")
    planner = CallLog(make_planner(profile, task))
    arm = Link.arm

    def logged_arm(link):
        planner.calls.append("A")
        return arm(link)

    monkeypatch.setattr(Link, "arm", logged_arm)
    start_episode = Recorder.start_episode
    monkeypatch.setattr(
        Recorder, "start_episode", lambda recorder, *a: planner.calls.append("S") or start_episode(recorder, *a)
    )
    # and a garbage collection, with what lives then frozen, so that no control step pays for one that walks every
    # startup object (12 ms with MuJoCo loaded: past a 200 Hz loop's watchdog); before the episode's segment opens
    # (a segment closed later is not kept frozen), and everything unfrozen once the run is over
    monkeypatch.setattr(gc, "unfreeze", lambda: planner.calls.append("U"))
    monkeypatch.setattr(gc, "collect", lambda *a: planner.calls.append("C") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: planner.calls.append("F"))
    run(profile, episodes=2, planner=planner, show_status=False)
    assert "".join(planner.calls) == ("WCFSA" + "p" * task.episode_steps) * 2 + "U"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_closed_terminal_ends_the_segment_cleanly(tmp_path, signum):
    process, _ = start_run_into_episode_2(tmp_path, 5_000)
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith("stopped by Ctrl-C, SIGTERM or SIGHUP after 2 episode(s), ")  # not taken for the 5 asked for
    segments, problems = verified_segments(tmp_path / "sim")
    assert [s.name for s in segments] == ["000001.mcap", "000002.mcap"] and problems == []
    metadata, topics = read_segment(segments[-1])
    assert metadata["summary"]["interrupted"] is True and len(topics["/transition"]) < 200


def write_profile(tmp_path, **settings) -> Path:
    robots = tmp_path / "robots"
    robots.mkdir(exist_ok=True)
    settings = {"task": "pendulum", "log_dir": str(tmp_path / "data"), **settings}
    path = robots / "bench.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(model="/nonexistent/q.onnx"), "missing model file /nonexistent/q.onnx"),
        (dict(task="acrobot"), "unknown task 'acrobot'"),
        (dict(serial="/dev/nope"), "cannot open serial port '/dev/nope'"),
        (dict(mode="turbo"), "mode = 'turbo'"),
        (dict(backend="nonsense"), "bench.toml: backend = 'nonsense': use 'numpy' or 'c' or"),
        (dict(episodez=3), "unknown setting(s) episodez"),
        (dict(baud="fast"), "baud = 'fast' should be a whole number"),
        (dict(deploy=dict(service="cron")), "[deploy] service = 'cron'"),
        (dict(host="robot.local"), "host belong(s) in a section: move them under [deploy]"),  # a profile from before
        (dict(standin_mass_scale={"pole": 1.3}), "move them under [standin]"),
        (dict(deploy=dict(hots="robot.local")), "unknown setting(s) [deploy] hots"),
        (dict(deploy=dict(gpu_extra="cuda")), "[deploy] gpu_extra = 'cuda': use 'gpu' or 'gpu-cuda12'"),
        (dict(episodes=-1), "episodes = -1"),
        (dict(deploy=dict(ssh_port="22")), "[deploy] ssh_port = '22' should be a whole number"),
        (dict(realtime_priority=120), "realtime_priority = 120: use 1-99"),
        (dict(name=""), "name = '': use letters, digits"),
        (dict(name="../../escape"), "name = '../../escape'"),  # the log folder stays inside log_dir
        (dict(log_dir=""), "log_dir = '': give the folder"),
        (dict(threads=0), "threads = 0: use 1 or more"),
        (dict(deadline_misses_max=0), "deadline_misses_max = 0: use 1 or more"),
        (dict(seed=-5), "seed = -5: use 0 or more"),
        (dict(starts="sideways"), "starts = 'sideways': use 'uniform' or 'hanging'"),
        (dict(standin=dict(mass_scale={"cart": 1.3})), "[standin] mass_scale: mass scale: "),
        (dict(standin=dict(mass_scale={"pole": -1})), "body 'pole' factor -1: use a positive number"),
        (dict(standin=dict(mass_scale=1.3)), "[standin] mass_scale = 1.3 should be a table"),
        (
            dict(serial="/dev/ttyUSB0", standin=dict(mass_scale={"pole": 1.3})),
            "[standin] mass_scale = {'pole': 1.3}: only with serial = \"standin\"",
        ),
        (dict(serial="/dev/ttyUSB0", standin=dict(randomise=True)), "[standin] randomise = True: only with serial"),
        (dict(standin=dict(randomise=True, mass_scale={"pole": 1.3})), "or mass_scale, not both"),
        (dict(standin=dict(randomise=True)), "task pendulum derives body_inertia from its parameters in Python"),
        (dict(standin=dict(randomise="yes")), "[standin] randomise = 'yes' should be true or false"),
        (dict(standin=dict(period=-0.01)), "[standin] period = -0.01"),
        (dict(standin=dict(period=1e9)), "[standin] period = 1000000000.0"),
        (dict(signing_key_file="/nonexistent/key"), "signing key file /nonexistent/key"),  # before the plant starts
        (dict(mppi={"K": "24"}), "[mppi] MPPI settings: K='24' must be a whole number"),
        (dict(mppi={"K": 24.5}), "K=24.5 must be a whole number"),
        (dict(mppi={"foo": 1}), "[mppi] unknown MPPI setting(s) foo"),
        (dict(mppi={"lam": 0.2}), "[mppi] lam is now called temperature"),
        (dict(mppi={"sigma": "x"}), "sigma='x' must be a number or a list of numbers"),
        (dict(mppi={"sigma": [1.0, 2.0]}), "sigma=[1.0, 2.0] has 2 values: give one, or one per action dim"),
        (dict(mppi={"K": 100_000_000_000}), "not enough memory for these MPPI settings"),
    ],
)
def test_bad_profile_settings_exit_non_zero_with_one_clear_line(tmp_path, capsys, settings, message):
    args = ("run", "--robot", str(write_profile(tmp_path, **settings)), "--quiet")
    if "memory" in message:  # refused at the first plan, after the plant started: a process of its own
        out = onboard_cli(*args)
        code, err = out.returncode, out.stderr
    else:  # refused before the plant starts
        code, err = onboard_main(capsys, *args)
        assert not (tmp_path / "data").exists()  # no log folder left behind, nor the folder the run made for it
    assert code != 0
    assert err.strip().count("\n") == 0 and message in err, err


def test_where_the_run_cannot_start_it_says_why_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    out = onboard_cli("run", "--robot", str(write_profile(tmp_path, log_dir=str(tmp_path / "a-file"))), "--quiet")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot keep segments in" in out.stderr
    models = tmp_path / "no-models"
    env = {**os.environ, "MPQ_MODELS_DIR": str(models)}
    out = onboard_cli("run", "--robot", "sim", "--log-dir", str(tmp_path), "--quiet", env=env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr  # the task's MJCF is read first
    assert f"no models folder {models}: give the folder that holds" in out.stderr
    models.mkdir()
    out = onboard_cli("run", "--robot", "sim", "--log-dir", str(tmp_path), "--quiet", env=env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "no MuJoCo model for task 'pendulum'" in out.stderr and "add models/pendulum/pendulum.xml" in out.stderr


def test_relative_paths_in_a_profile_outside_robots_start_at_the_repository(tmp_path):
    """As the README says; a profile in a robots/ folder (the repository's, a release's) starts one level up."""
    (tmp_path / "elsewhere.toml").write_text('task = "pendulum"\nmodel = "models/pendulum/q.onnx"\n')
    assert load_profile(str(tmp_path / "elsewhere.toml")).model_path == ROOT / "models/pendulum/q.onnx"
    assert load_profile(str(write_profile(tmp_path, model="m/q.onnx"))).model_path == tmp_path / "m/q.onnx"


def test_malformed_toml_and_unknown_robot_are_one_line(tmp_path):
    path = tmp_path / "robots" / "broken.toml"
    path.parent.mkdir()
    path.write_text('task = "pendulum\n')
    out = onboard_cli("run", "--robot", str(path))
    assert out.returncode == 2 and "is not valid TOML" in out.stderr and out.stderr.count("\n") == 1
    out = onboard_cli("run", "--robot", "mars-rover")
    assert out.returncode == 2 and "no robot profile" in out.stderr and "sim" in out.stderr


@pytest.mark.parametrize("problem", ["corrupt", "other task"])
def test_bad_models_are_refused_before_anything_moves(tmp_path, make_q, problem):
    path, _ = make_q("cartpole" if problem == "other task" else "pendulum")
    if problem == "corrupt":
        path.write_bytes(path.read_bytes()[:-3] + b"abc")
    out = onboard_cli("run", "--robot", str(write_profile(tmp_path, model=str(path))), "--quiet")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert ("sha256" if problem == "corrupt" else "trained for task 'cartpole'") in out.stderr
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").rglob("*.mcap"))


def test_selfcheck_reports_and_fails_loudly(tmp_path, make_q):
    path, _ = make_q("pendulum")
    out = onboard_cli("selfcheck", "--robot", str(write_profile(tmp_path, model=str(path))))
    assert out.returncode == 0, out.stderr
    assert "handshake OK" in out.stdout and "sha256" in out.stdout and "selfcheck passed" in out.stdout
    path.write_bytes(path.read_bytes() + b"\x00")
    out = onboard_cli("selfcheck", "--robot", str(write_profile(tmp_path, model=str(path))))
    assert out.returncode != 0 and "sha256" in out.stderr
    # the profile as a run would override it (a new task, its backend, plain MPPI): checked without editing it
    out = onboard_cli("selfcheck", "--task", "ball_in_cup", "--backend", "mujoco", "--model", "", "--offline")
    assert out.returncode == 0, out.stderr
    assert "task ball_in_cup, backend mujoco" in out.stdout and "model: none (plain MPPI)" in out.stdout


def test_selfcheck_refuses_what_the_run_would_refuse_cpus_and_the_log_folder(tmp_path):
    """Deploy gates a release on `selfcheck --offline`: a profile it passes must not fail when the service starts."""
    out = onboard_cli("selfcheck", "--robot", str(write_profile(tmp_path, cpus=[4095])), "--offline")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot pin the loop to cpus = [4095]" in out.stderr
    (tmp_path / "a-file").write_text("")
    for log_dir in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        out = onboard_cli("selfcheck", "--robot", str(write_profile(tmp_path)), "--log-dir", str(log_dir))
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert f"cannot keep segments in {log_dir / 'bench'} (Not a directory): set another log_dir" in out.stderr
    out = onboard_cli("selfcheck", "--robot", str(write_profile(tmp_path)), "--offline")
    assert out.returncode == 0 and f"log folder {tmp_path / 'data' / 'bench'}: writable" in out.stdout, out.stderr
    assert not (tmp_path / "data").exists()  # checked where it would be made, not made


def test_ctrl_c_while_the_plant_is_being_reached_is_one_line_and_exit_130(tmp_path):
    """Before the loop owns Ctrl-C (the port opened, the handshake waiting on a silent plant)."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "onboard", "run", "--robot", str(write_profile(tmp_path, serial=os.ttyname(slave)))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert os.read(master, 1)  # the handshake's first bytes: the run is waiting for the plant now
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        os.close(master)
        os.close(slave)
    assert process.returncode == 130 and err.strip().count("\n") == 0, err
    assert err.strip().startswith("interrupted: run stopped at once")
    assert not (tmp_path / "data").exists()  # the log folder the refused run made is gone again


def test_plan_refuses_a_state_whose_costs_overflow_rather_than_print_infinity():
    out = onboard_cli("plan", "--state", "0,0,1e308", "--json")
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert "--state 0,0,1e308: every rollout's cost overflows from there" in out.stderr


def test_episode_ids_continue_past_segments_pruned_after_a_pull(tmp_path):
    """pull-data --prune deletes pulled segments on the robot; their names must never be used again."""
    profile = load_profile("sim", log_dir=str(tmp_path))
    run(profile, 2, show_status=False)
    folder = tmp_path / "sim"
    for segment in folder.glob("*.mcap"):
        segment.unlink()
    run(profile, 1, show_status=False)
    assert [entry["segment"] for entry in read_manifest(folder)] == ["000001.mcap", "000002.mcap", "000003.mcap"]


def test_a_segment_closed_but_not_listed_before_a_crash_is_listed_at_the_next_start(tmp_path):
    """A crash between the rename to .mcap and the MANIFEST line: the complete segment is listed, not lost."""
    profile = load_profile("sim", log_dir=str(tmp_path))
    run(profile, 1, show_status=False)
    folder = tmp_path / "sim"
    manifest = folder / "MANIFEST"
    manifest.write_text("")  # as if the process died before appending the line
    Recorder(tmp_path, "sim")
    good, problems = verified_segments(folder)
    assert [p.name for p in good] == ["000001.mcap"] and problems == []
    assert read_manifest(folder)[0]["recovered"] is True


def test_a_model_trained_for_other_mppi_settings_is_named_before_it_plans(tmp_path, make_q, caplog):
    """A Q's values are the free energy of the MPPI it was trained with: planning with other settings is
    allowed (an experiment) but never silent."""
    from onboard.selfcheck import selfcheck

    task = get_task("pendulum")
    path, _ = make_q("pendulum", extra={"mppi": MPPIConfig.for_task(task).to_dict()})
    profile = load_profile("sim", model=str(path), log_dir=str(tmp_path))
    assert "model's MPPI settings: the ones this profile plans with" in selfcheck(profile, link=False)
    profile.mppi = {**profile.mppi, "H": 32, "n_iters": 1}
    with caplog.at_level("WARNING", logger="mpq.loop"):
        make_planner(profile, task)
    (record,) = caplog.records
    assert "H=32 (trained with 8)" in record.message and "n_iters=1 (trained with 3)" in record.message
    assert "K=" not in record.message and "[mppi]" in record.message
    assert any(line.startswith("warning: ") and "H=32" in line for line in selfcheck(profile, link=False))
    caplog.clear()  # more iterations than trained: the same objective optimised further, no warning
    profile.mppi = {**profile.mppi, "H": 8, "n_iters": 5}
    with caplog.at_level("WARNING", logger="mpq.loop"):
        make_planner(profile, task)
    assert caplog.records == []


def test_a_model_exported_before_the_temperature_was_named_is_still_held_to_it(tmp_path, make_q, caplog):
    """q.json files written before the rename record the temperature as "lam": still compared, under its name."""
    task = get_task("pendulum")
    trained = {("lam" if k == "temperature" else k): v for k, v in MPPIConfig.for_task(task).to_dict().items()}
    path, _ = make_q("pendulum", extra={"mppi": trained})
    profile = load_profile("sim", model=str(path), log_dir=str(tmp_path))
    profile.mppi = {**profile.mppi, "temperature": 0.5}
    with caplog.at_level("WARNING", logger="mpq.loop"):
        make_planner(profile, task)
    (record,) = caplog.records
    assert "temperature=0.5 (trained with 0.15)" in record.message


@pytest.mark.parametrize("recorded, warned", [("not a table", False), ({"sigma": [1.0, 2.0, 3.0]}, True), ({}, False)])
def test_odd_trained_settings_in_a_manifest_never_stop_the_loop(tmp_path, make_q, caplog, recorded, warned):
    path, _ = make_q("pendulum", extra={"mppi": recorded})
    profile = load_profile("sim", model=str(path), log_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="mpq.loop"):
        make_planner(profile, get_task("pendulum"))
    assert bool(caplog.records) == warned


class PolicyRecorder:
    """The profile's planner, noting the scheduling policy each plan runs under, and the stand-in's."""

    def __init__(self, planner):
        self.planner, self.seen, self.standin = planner, set(), set()

    def __getattr__(self, name):
        return getattr(self.planner, name)

    def propose(self, state):
        self.seen.add((os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0).sched_priority))
        if not self.standin:
            self.standin = {os.sched_getscheduler(pid) for pid in children(os.getpid())}
        return self.planner.propose(state)


def children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            pass
    return pids


@pytest.mark.skipif(
    realtime_refusal(50) is not None, reason="SCHED_FIFO is not permitted here (needs root or CAP_SYS_NICE)"
)
@pytest.mark.timing
def test_realtime_plans_run_at_fifo_priority_and_the_process_is_left_as_it_was(tmp_path):
    """Other processes cannot delay a realtime plan; the stand-in it starts and the caller stay at normal priority.
    At 50 Hz: the stand-in's watchdog (3 periods) then survives a loaded machine, and the priority is what is tested."""
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    profile = load_profile("sim", log_dir=str(tmp_path), mode="realtime", standin=dict(period=0.02))
    planner = PolicyRecorder(make_planner(profile, get_task("pendulum")))
    stats = run(profile, episodes=1, planner=planner, show_status=False)
    assert planner.seen == {(os.SCHED_FIFO, 50)} and stats.summary()["scheduling"] == "SCHED_FIFO 50"
    assert planner.standin == {os.SCHED_OTHER}
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
    lockstep = PolicyRecorder(make_planner(profile, get_task("pendulum")))
    run(load_profile("sim", log_dir=str(tmp_path)), episodes=1, planner=lockstep, show_status=False)
    assert lockstep.seen == {before}  # lockstep runs as fast as the plant answers: no realtime priority


def without_realtime_rights() -> list[str]:
    """A command prefix under which SCHED_FIFO is refused: as root, drop CAP_SYS_NICE and the rtprio limit."""
    if realtime_refusal(50) is not None:
        return []
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("prlimit") is None:
        pytest.skip("cannot take the realtime right away here (needs root with setpriv and prlimit)")
    return ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "prlimit", "--rtprio=0"]


@pytest.mark.timing
def test_a_refused_realtime_priority_is_named_once_and_the_loop_runs_on(tmp_path):
    robot = str(
        write_profile(tmp_path, mode="realtime", standin=dict(period=0.01), deadline_misses_max=50)
    )  # no priority: margin
    prefix = without_realtime_rights()
    out = subprocess.run(
        [*prefix, sys.executable, "-m", "onboard", "run", "--robot", robot, "--quiet", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("\n") == 1 and "cannot run at realtime priority 50" in out.stderr, out.stderr
    assert "realtime_priority = 0" in out.stderr  # the way to silence it, and (above it) the ways to allow it
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["steps"] == 200 and summary["scheduling"].startswith("normal")
    out = subprocess.run(
        [*prefix, sys.executable, "-m", "onboard", "selfcheck", "--robot", robot, "--offline"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "warning: the control loop cannot run at realtime priority 50" in out.stdout
    if prefix:  # and where it is allowed, selfcheck says so
        assert (
            "realtime priority 50 (SCHED_FIFO): permitted"
            in onboard_cli("selfcheck", "--robot", robot, "--offline").stdout
        )


def test_a_full_disk_mid_episode_still_disarms_the_plant_first(tmp_path, monkeypatch):
    """The recorder failing (ENOSPC), even again while it closes the segment, must not keep the plant armed."""
    from onboard.recorder import Recorder

    calls = []
    write, disarm = Recorder.write, Link.disarm

    def full_disk(self, topic, record, *args, **kwargs):
        if topic == "/transition" and record["t"] == 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, topic, record, *args, **kwargs)

    def failing_close(self, summary=None):
        calls.append("end_episode")
        raise OSError(errno.ENOSPC, "No space left on device")

    def recorded_disarm(self, *args, **kwargs):
        calls.append("disarm")
        return disarm(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "write", full_disk)
    monkeypatch.setattr(Recorder, "end_episode", failing_close)
    monkeypatch.setattr(Link, "disarm", recorded_disarm)
    with pytest.raises(LoopError, match=f"cannot write the log in {tmp_path / 'sim'} .*: the plant is disarmed; free"):
        run(load_profile("sim", log_dir=str(tmp_path)), episodes=1, show_status=False)
    assert calls == ["disarm", "end_episode"]  # zero actuation first, then the segment
    assert (tmp_path / "sim" / "000001.mcap.partial").exists()  # kept for the next start to recover


def test_run_plans_with_the_mjcf_when_asked_and_the_segment_says_so(tmp_path):
    out = onboard_cli("run", "--backend", "mujoco", "--episodes", "1", "--log-dir", str(tmp_path), "--quiet", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == get_task("pendulum").episode_steps
    (segment,), problems = verified_segments(tmp_path / "sim")
    assert problems == [] and read_segment(segment)[0]["segment"]["backend"] == "mujoco"


@pytest.mark.timing
@pytest.mark.parametrize("rejecting, expected", [(True, "zero"), (False, "plan")])
def test_realtime_feeds_the_plant_while_states_are_lost_and_holds_still_while_they_are_garbage(
    rejecting, expected, monkeypatch
):
    """Lost states: the plan's next actions go out each period; non-finite ones: the safe action (zero). A real
    link on a pty whose plant end sends no state at all, or only states with a NaN inside."""
    from onboard import loop

    monkeypatch.setattr(loop, "STATE_TIMEOUT", 0.2)
    profile = load_profile("sim", mode="realtime")
    task = get_task("pendulum")
    planner = make_planner(profile, task)
    planner.act(task.hanging_state())  # a plan to fall back on
    master, slave = os.openpty()
    tty.setraw(slave)
    link = Link(os.ttyname(slave), "pendulum", 3, 1)
    done = threading.Event()

    def plant_end():
        mav, seq = mavlink.MAVLink(None, srcSystem=1, srcComponent=1), 7
        while not done.is_set():
            if rejecting:  # a valid frame, garbage inside
                seq += 1
                os.write(master, plant_state(mav, seq, [0.0, np.nan, 0.0]))
            if select.select([master], [], [], 0.005)[0]:
                os.read(master, 4096)  # the commands, taken off the wire

    thread = threading.Thread(target=plant_end, daemon=True)
    thread.start()
    try:
        with pytest.raises(LoopError, match="rejected as non-finite" if rejecting else "sent no state"):
            loop._exchange(link, np.array([0.5]), SimpleNamespace(seq=7), profile, 0.01, planner)
    finally:
        done.set()
        thread.join()
        link.close()
        os.close(master)
        os.close(slave)
    first, *fallbacks = link.commands.values()  # every command sent, by seq, as the wire carried it
    assert first == [0.5] and len(fallbacks) >= 3 and link.counts["states_late"] == len(fallbacks)
    assert (link.counts["states_rejected"] > 0) == rejecting
    if expected == "zero":
        assert all(u == [0.0] for u in fallbacks)
    else:
        assert any(u != [0.0] for u in fallbacks)  # the warm-started plan's next actions


class AffinityLog:
    """The profile's planner, noting the CPUs its control steps ran on."""

    def __init__(self, planner):
        self.planner, self.cpus = planner, set()

    def __getattr__(self, name):
        return getattr(self.planner, name)

    def propose(self, state):
        self.cpus |= os.sched_getaffinity(0)
        return self.planner.propose(state)


def test_cpus_pin_the_loop_and_its_threads_while_it_runs_and_a_cpu_the_machine_lacks_is_one_line(tmp_path):
    before = os.sched_getaffinity(0)
    profile = load_profile("sim", log_dir=str(tmp_path), cpus=[min(before)], backend="mujoco")
    planner = AffinityLog(make_planner(profile, get_task("pendulum")))
    stats = run(profile, episodes=1, planner=planner, show_status=False)
    assert planner.cpus == {min(before)} and stats.scheduling == f"normal on cpus {min(before)}"
    assert os.sched_getaffinity(0) == before  # the caller's CPUs are back
    out = onboard_cli("run", "--robot", str(write_profile(tmp_path, cpus=[4096])), "--quiet")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot pin the loop to cpus = [4096]" in out.stderr
    assert "cpus = ['a']" in onboard_cli("run", "--robot", str(write_profile(tmp_path, cpus=["a"]))).stderr
