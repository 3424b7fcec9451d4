"""The stand-in's failsafes as behaviour: watchdog latch, handshake refusal, signing, bad start-up."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from firmware_bridge.dialect import DIALECT_VERSION, mavlink
from firmware_bridge.link import HandshakeError, Link, LinkError

PERIOD = 0.05  # pendulum control period
WATCHDOG = 3 * PERIOD


def drive(link, steps: int, u: float = 0.3):
    """Handshake, reset, arm, and `steps` answered lockstep commands."""
    link.handshake()
    state = link.reset(1, state=[0.0, 0.1, 0.0])
    link.arm()
    for _ in range(steps):
        link.send_command([u], state.seq)
        state = link.recv_state(1.0)
        assert state is not None


def wait_for_status(link, condition, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        link.service(0.02)
        if link.status is not None and condition(link.status):
            return link.status
    raise AssertionError(f"no status matching the condition within {timeout} s (last: {link.status})")


@pytest.mark.timing
def test_realtime_watchdog_latches_until_rearmed(standin):
    plant = standin("--task", "pendulum", "--mode", "realtime")
    link = Link(plant.port, "pendulum", 3, 1)
    link.handshake()
    link.reset(1, state=[0.0, 0.3, 0.0])
    link.arm()
    last_sent = None
    for _ in range(10):  # half a second of healthy control at the plant's pace
        state = link.recv_state(1.0)
        link.send_command([0.5], state.seq)
        last_sent = time.monotonic()
    tripped = wait_for_status(link, lambda s: s.failsafe == mavlink.MPQ_FAILSAFE_WATCHDOG)
    assert not tripped.armed and tripped.watchdog_trips == 1
    # not before the watchdog's time without a command (how soon after it: test_firmware.py, on a simulated clock;
    # here the stand-in's wake-ups depend on the machine's load)
    assert tripped.time_us / 1e6 >= last_sent + WATCHDOG - 1e-3

    applied = tripped.commands_applied
    for _ in range(5):  # commands resume: the latch holds
        state = link.recv_state(1.0)
        link.send_command([0.5], state.seq)
    with pytest.raises(LinkError, match="failsafe MPQ_FAILSAFE_WATCHDOG latched") as denied:
        link.arm(timeout=0.5)
    assert denied.value.failsafe == mavlink.MPQ_FAILSAFE_WATCHDOG  # what the loop decides a re-arm on
    again = pickle.loads(pickle.dumps(denied.value))  # as a Ray collector's error reaches the driver
    assert (str(again), again.failsafe) == (str(denied.value), denied.value.failsafe)
    still = wait_for_status(link, lambda s: s.commands_rejected >= 5)
    assert still.failsafe == mavlink.MPQ_FAILSAFE_WATCHDOG and still.commands_applied == applied

    link.rearm()  # the explicit re-arm clears it, and commands move the plant again
    link.status = None
    end = time.monotonic() + 3.0
    while link.status is None and time.monotonic() < end:  # keep commanding until the next 1 Hz status
        state = link.recv_state(1.0)
        link.send_command([0.5], state.seq)
    resumed = link.status
    assert resumed.failsafe == mavlink.MPQ_FAILSAFE_NONE and resumed.armed
    assert resumed.commands_applied > applied and resumed.watchdog_trips == 1
    link.close()
    assert plant.stop()[0] == 0


@pytest.mark.parametrize(
    "host, names",
    [
        (dict(task="cartpole", state_dim=5, act_dim=1), ["task: host cartpole vs plant pendulum", "dims: host (5, 1)"]),
        (dict(task="pendulum", state_dim=2, act_dim=1), ["dims: host (2, 1) vs plant (3, 1)"]),
        (dict(task="pendulum", state_dim=3, act_dim=1, dialect_version=99), ["dialect: host (99,"]),
    ],
)
def test_handshake_mismatch_is_a_clear_error_and_nothing_moves(standin, host, names):
    plant = standin("--task", "pendulum")
    link = Link(plant.port, **host)
    with pytest.raises(HandshakeError) as error:
        link.handshake()
    message = str(error.value)
    assert all(name in message for name in names) and "\n" not in message
    # a host that ignores the refusal still cannot reset, arm or move the plant
    link._episode_control_sender(mavlink.MPQ_EPISODE_RESET_GIVEN, 1, 0, [0.0, 1.0, 2.0], 3, link._next_request())()
    with pytest.raises(LinkError, match="did not arm: it has no matching handshake"):
        link.arm(timeout=0.5)
    link.send_command([2.0], 1)
    status = wait_for_status(link, lambda s: s.commands_rejected >= 1)
    assert not status.armed and not status.handshake_ok and status.commands_applied == 0
    assert link.recv_state(0.2) is None  # no reset, no step: the plant never moved
    link.close()
    plant.stop()


@pytest.fixture
def key_files(tmp_path):
    good, wrong = tmp_path / "robot.key", tmp_path / "other.key"
    good.write_text(bytes(range(32)).hex())
    wrong.write_bytes(bytes(range(1, 33)))
    return good, wrong


def test_signing_drops_and_counts_unsigned_and_wrongly_signed_frames(standin, key_files):
    good, wrong = key_files
    plant = standin("--task", "pendulum", "--signing-key-file", str(good))
    keeper = os.open(plant.port, os.O_RDWR | os.O_NOCTTY)  # keeps the pty up while hosts come and go

    unsigned = Link(plant.port, "pendulum", 3, 1)
    with pytest.raises(HandshakeError, match="no handshake"):
        unsigned.handshake(timeout=0.5)
    assert wait_for_status(unsigned, lambda s: s.signature_errors >= 1).handshake_ok == 0
    unsigned.close()

    impostor = Link(plant.port, "pendulum", 3, 1, signing_key=wrong.read_bytes())
    impostor.mav.signing.timestamp += 10**9  # hours ahead: a forger who could poison a naive replay check
    with pytest.raises(HandshakeError, match="no handshake"):
        impostor.handshake(timeout=0.5)
    end = time.monotonic() + 3.0
    while impostor.stats()["signature_errors"] == 0 and time.monotonic() < end:
        impostor.service(0.1)
    assert impostor.stats()["signature_errors"] >= 1  # and the plant's signed frames fail our check too
    impostor.close()

    robot = Link(plant.port, "pendulum", 3, 1, signing_key=bytes(range(32)))
    drive(robot, 20)
    status = wait_for_status(robot, lambda s: s.commands_applied == 20)
    assert status.signature_errors >= 2  # the unsigned and the impostor's frames, counted by the plant
    assert robot.stats()["signature_errors"] == 0
    robot.close()
    os.close(keeper)
    plant.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "acrobot"], "no MuJoCo model for task 'acrobot'"),
        (["--task", "../pendulum"], "task '../pendulum': a task is a folder name under"),
        (["--task", "pendulum", "--models", "/nonexistent"], "no models folder /nonexistent"),
        (["--task", "pendulum", "--device", "/dev/does-not-exist"], "/dev/does-not-exist"),
        (["--task", "pendulum", "--device", "/dev/null"], "cannot serve /dev/null at 115200 baud"),
        (["--task", "pendulum", "--control-period", "0"], "--control-period 0.0: use seconds from"),
        (["--task", "pendulum", "--control-period", "nan"], "--control-period nan"),
        (["--task", "pendulum", "--control-period", "1e12"], "--control-period 1000000000000.0"),
        (["--task", "pendulum", "--watchdog-periods", "nan"], "--watchdog-periods nan"),  # NaN would never trip
        (["--task", "pendulum", "--watchdog-periods", "-1"], "--watchdog-periods -1.0"),
        (["--task", "pendulum", "--randomise", "body_mass[pole]=0.5:1.5", "--randomise-seed", "-1"], "seed -1: use 0"),
        (["--task", "pendulum", "--mass-scale", "pole=1.3", "--mass-scale", "pole=2"], "'pole' given twice"),
        (
            ["--task", "pendulum", "--randomise", "body_mass[pole]=-2:-1"],
            "body_mass[pole] from -2: a body_mass must be",
        ),
        (["--task", "pendulum", "--randomise", "dof_damping=-1:1"], "a dof_damping must be >= 0"),
        (["--task", "pendulum", "--baud", "0"], "--baud 0: use 1 or more"),
        (["--task", "pendulum", "--applied-log", "/dev/null/applied.jsonl"], "--applied-log /dev/null/applied.jsonl"),
        (["--task", "pendulum", "--signing-key-file", "/nonexistent/key"], "--signing-key-file /nonexistent/key"),
    ],
)
def test_standin_refuses_bad_start_up_in_one_line(args, message):
    command = [sys.executable, "-m", "firmware_bridge.standin", *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)  # one that is not refused would serve
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and message in out.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--rate", "-1", "/dev/ptmx"], 2, "--rate -1.0: use a probability per byte in [0, 1)"),
        (["--rate", "nan", "/dev/ptmx"], 2, "--rate nan"),
        (["--seed", "-1", "/dev/ptmx"], 2, "--seed -1: use 0 or more"),
        (["/dev/does-not-exist"], 1, "cannot open /dev/does-not-exist: No such file or directory"),
        (["{tmp}/a-file"], 1, "Inappropriate ioctl for device; give the plant's serial device or pty"),  # not a tty
    ],
)
def test_fault_proxy_refuses_bad_start_up_in_one_line(tmp_path, args, code, message):
    (tmp_path / "a-file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    command = [sys.executable, "-m", "firmware_bridge.fault_proxy", *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == code and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and message in out.stderr


def test_link_to_a_port_that_cannot_open_is_one_line():
    with pytest.raises(LinkError, match="cannot open serial port '/dev/nope'") as error:
        Link("/dev/nope", "pendulum", 3, 1)
    assert "\n" not in str(error.value)


def test_loop_url_works_as_a_transport():
    """pyserial URLs: loop:// echoes our own frames back; the parser sees them as well-formed."""
    link = Link("loop://", "pendulum", 3, 1)
    link.send_command(np.array([0.5]), 1)
    link.service(0.1)
    assert link.stats()["frames"] == 2  # the heartbeat and the command came back intact
    link.close()


def test_seeded_resets_are_reproducible_and_inside_the_models_box(standin):
    plant = standin("--task", "cartpole")
    link = Link(plant.port, "cartpole", 5, 1)
    link.handshake()
    first = link.reset(1, seed=123).state
    again = link.reset(2, seed=123).state
    other = link.reset(3, seed=124).state
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first[0] == 0.0  # time: the start of the episode
    low, high = [-0.5, np.pi - 0.2, -0.1, -0.1], [0.5, np.pi + 0.2, 0.1, 0.1]  # qpos, qvel
    assert np.all(first[1:] >= np.float32(low)) and np.all(first[1:] <= np.float32(high))
    link.close()
    plant.stop()


@pytest.mark.timing
def test_link_is_declared_lost_after_the_configured_silence(standin):
    plant = standin("--task", "pendulum")
    link = Link(plant.port, "pendulum", 3, 1, lost_after=0.3)
    assert link.lost  # nothing heard yet
    link.handshake()
    assert not link.lost
    code, report = plant.stop()  # the plant goes silent
    assert code == 0 and report["stopped"] == "stopped by signal"
    time.sleep(0.35)
    assert link.lost  # silence alone says so (writing to the dead pty would raise LinkError too)
    with pytest.raises(LinkError, match="the plant's end is gone"):
        link.next_heartbeat = 0.0
        link.service(0.0)
    link.close()


@pytest.mark.timing
def test_reusing_an_episode_id_in_realtime_still_returns_the_new_start(standin):
    plant = standin("--task", "pendulum", "--mode", "realtime")
    link = Link(plant.port, "pendulum", 3, 1)
    link.handshake()
    link.reset(1, state=[0.0, 0.5, 0.0])
    time.sleep(0.5)  # the plant streams states of episode 1 that nobody reads yet
    first = link.reset(1, state=[0.0, 2.0, 0.0])
    np.testing.assert_allclose(first.state, [0.0, 2.0, 0.0], atol=1e-6)
    link.close()
    plant.stop()


def test_a_reconnecting_host_can_command_again(standin):
    plant = standin("--task", "pendulum")
    keeper = os.open(plant.port, os.O_RDWR | os.O_NOCTTY)
    for _ in range(2):  # the second host starts its command count at 1 again
        link = Link(plant.port, "pendulum", 3, 1)
        drive(link, 20)
        link.close()
    os.close(keeper)
    plant.stop()


def test_a_reset_outside_the_plants_limits_is_refused(standin):
    plant = standin("--task", "cartpole")
    link = Link(plant.port, "cartpole", 5, 1)
    link.handshake()
    for bad in ([0.0, 0.0, 0.0, 0.0, 1e20], [0.0, 3.0, 0.0, 0.0, 0.0]):  # absurd speed; cart beyond its rail
        with pytest.raises(LinkError, match="refused the reset"):
            link.reset(1, state=bad)
    assert link.reset(2, state=[0.0, 0.0, 0.1, 0.0, 0.0]).episode_id == 2
    link.close()
    plant.stop()
    # why, in the stand-in's log (the host's error can only say that the plant refused)
    refusals = [json.loads(line)["reset_refused"] for line in plant.stderr_lines if "reset_refused" in line]
    # (a request the host sent again is refused, and logged, again)
    assert list(dict.fromkeys(refusals)) == ["values beyond 1e3", "joint 'slider' at 3, outside its range [-2.4, 2.4]"]


def test_a_dead_plant_is_a_link_error_not_a_silent_timeout(standin):
    plant = standin("--task", "pendulum")
    link = Link(plant.port, "pendulum", 3, 1)
    link.handshake()
    state = link.reset(1, state=[0.0, 0.1, 0.0])
    link.arm()
    plant.process.kill()
    plant.process.wait()
    with pytest.raises(LinkError, match="plant's end"):
        link.send_command([0.1], state.seq)
        link.recv_state(2.0)
    link.close()


def test_a_dialect_checksum_mismatch_is_refused(standin, monkeypatch):
    from firmware_bridge import link as link_module

    plant = standin("--task", "pendulum")
    monkeypatch.setattr(link_module, "DIALECT_CHECKSUM", 0x1234)
    link = Link(plant.port, "pendulum", 3, 1)
    version = DIALECT_VERSION
    with pytest.raises(HandshakeError, match=rf"dialect: host \({version}, 4660\) vs plant \({version}, \d+\)"):
        link.handshake()
    link.close()
    plant.stop()


def test_a_task_only_mismatch_names_the_tasks(standin):
    plant = standin("--task", "pendulum")
    link = Link(plant.port, "acrobot", 3, 1)
    with pytest.raises(HandshakeError) as error:
        link.handshake()
    assert "task: host acrobot vs plant pendulum" in str(error.value) and "dims" not in str(error.value)
    link.close()
    plant.stop()


def test_a_port_another_process_holds_is_refused_naming_it(tmp_path):
    """One controller per plant: a second run (or a selfcheck during a run) on the port would interleave its
    commands with the first's. The holder is named, not every process that merely has the port open."""
    master, slave = os.openpty()
    port = os.ttyname(slave)
    hold = "import sys, time\nfrom firmware_bridge.link import Link\nLink(sys.argv[1], 'pendulum', 3, 1)\n"
    keep = "import os, sys, time\nos.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)\n"
    wait = "print('open', flush=True)\ntime.sleep(60)"
    holder, keeper = (
        subprocess.Popen([sys.executable, "-c", code + wait, port], stdout=subprocess.PIPE, text=True)
        for code in (hold, keep)
    )
    try:
        assert holder.stdout.readline() == "open\n" and keeper.stdout.readline() == "open\n"
        with pytest.raises(LinkError, match=f"serial port '{port}' is in use by another process") as error:
            Link(port, "pendulum", 3, 1)
        message = str(error.value)
        assert f"(pid {holder.pid}: " in message and f"pid {keeper.pid}" not in message and "\n" not in message
        holder.kill()
        holder.wait()
        Link(port, "pendulum", 3, 1).close()  # free again once its holder is gone
    finally:
        for process in (holder, keeper):
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)


def test_a_plant_that_stops_reading_is_a_link_error_not_a_hang():
    """A firmware that hangs stops draining the port: writes must not block for good (no timeout of the loop
    could act, and Ctrl-C could not stop it), but end in one LinkError the loop stops on."""
    master, slave = os.openpty()  # nobody ever reads the master: the pty's buffer fills
    link = Link(os.ttyname(slave), "pendulum", 3, 1)
    outcome = []

    def keep_sending():
        try:
            for seq in range(1, 1_000_000):
                link.send_command(np.array([0.1]), seq)
        except LinkError as e:
            outcome.append(str(e))

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    sender.join(60)  # a guard against the hang this test is about, not a speed limit
    try:
        assert not sender.is_alive(), "the write blocked for good"
        (message,) = outcome
        assert "stalled" in message and "the plant's end stopped reading" in message
    finally:
        os.close(master)
        link.close()


def test_a_baud_rate_the_port_cannot_take_is_one_line():
    master, slave = os.openpty()
    try:
        with pytest.raises(LinkError, match="at 99999999999 baud") as error:
            Link(os.ttyname(slave), "pendulum", 3, 1, baud=99_999_999_999)
        assert "\n" not in str(error.value)
    finally:
        os.close(master)
        os.close(slave)
