"""Other MAVLink tools and other languages speak our dialect: pymavlink's mavutil, and C from the headers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import dialect
from firmware_bridge.dialect import mavlink
from firmware_bridge.frames import FrameParser

C_PROGRAM = Path(__file__).with_name("command_vector.c")
# The shared test vector: one MPQ_COMMAND, encoded by C and by Python, decoded by the other.
VECTOR = dict(time_us=123456789, seq=42, state_seq=41, act_dim=1, u=[1.5, -0.25] + [0.0] * 6)
SYSTEM, COMPONENT = 255, 191


def test_mavutil_reads_the_standins_heartbeat_and_status_and_arms_it_with_command_long(standin, monkeypatch):
    from pymavlink import mavutil

    plant = standin("--task", "pendulum")
    monkeypatch.setattr(mavutil, "mavlink", mavlink)  # mavutil's way to speak a dialect it does not ship
    connection = mavutil.mavlink_connection(plant.port, baud=115200, source_system=255)
    heartbeat = connection.recv_match(type="HEARTBEAT", blocking=True, timeout=5)
    status = connection.recv_match(type="MPQ_STATUS", blocking=True, timeout=5)
    assert heartbeat is not None and heartbeat.autopilot == mavlink.MAV_AUTOPILOT_GENERIC
    assert heartbeat.get_srcSystem() == 1 and not connection.motors_armed()
    assert status is not None and status.mode == mavlink.MPQ_MODE_LOCKSTEP and status.armed == 0

    def arm_disarm(arm: int):
        connection.mav.command_long_send(1, 1, mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, arm, 0, 0, 0, 0, 0, 0)
        ack = connection.recv_match(type="COMMAND_ACK", blocking=True, timeout=5)
        assert ack is not None and ack.command == mavlink.MAV_CMD_COMPONENT_ARM_DISARM
        return ack.result

    assert arm_disarm(1) == mavlink.MAV_RESULT_DENIED  # no matching handshake yet: it must not arm
    connection.mav.mpq_handshake_send(
        dialect.DIALECT_VERSION, dialect.DIALECT_CHECKSUM, b"pendulum", 3, 1, 0, mavlink.MPQ_ROLE_HOST, 0
    )
    assert connection.recv_match(type="MPQ_HANDSHAKE", blocking=True, timeout=5).accepted == 1
    assert arm_disarm(1) == mavlink.MAV_RESULT_ACCEPTED
    connection.recv_match(type="HEARTBEAT", blocking=True, timeout=5)
    assert connection.motors_armed()  # mavutil's own reading of the HEARTBEAT
    assert arm_disarm(0) == mavlink.MAV_RESULT_ACCEPTED
    connection.recv_match(type="HEARTBEAT", blocking=True, timeout=5)
    assert not connection.motors_armed()
    connection.close()
    code, _ = plant.stop()
    assert code == 0  # SIGTERM: a clean exit


def headers_command(output) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "firmware_bridge.dialect", "c", str(output)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_headers_into_a_path_with_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "build").write_text("")
    for output in (tmp_path / "build", tmp_path / "build" / "firmware_headers"):
        made = headers_command(output)
        assert made.returncode == 2 and made.stderr.count("\n") == 1, made.stderr
        assert f"{tmp_path / 'build'} is a file, not a folder; give a folder for the headers" in made.stderr


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    out = tmp_path_factory.mktemp("firmware")
    made = headers_command(out / "headers")  # what `make firmware-headers` runs
    assert made.returncode == 0 and made.stdout.startswith("C headers for mpq dialect"), made.stderr
    binary = out / "command_vector"
    build = subprocess.run(
        [
            "cc",
            "-std=c99",
            "-Wall",
            "-Werror",
            "-Wno-address-of-packed-member",
            "-I",
            str(out / "headers"),
            str(C_PROGRAM),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    return binary


def python_frame() -> bytes:
    sender = mavlink.MAVLink(None, srcSystem=SYSTEM, srcComponent=COMPONENT)
    return bytes(sender.mpq_command_encode(**VECTOR).pack(sender))


def test_a_command_encoded_in_c_decodes_in_python_byte_for_byte(c_program):
    out = subprocess.run([str(c_program), "encode"], capture_output=True, text=True, check=True)
    frame = bytes.fromhex(out.stdout.strip())
    assert frame == python_frame()  # the same bytes on the wire from both languages
    (msg,) = FrameParser(mavlink.MAVLink(None)).feed(frame)
    assert msg.get_type() == "MPQ_COMMAND" and (msg.get_srcSystem(), msg.get_srcComponent()) == (SYSTEM, COMPONENT)
    for field, value in VECTOR.items():
        np.testing.assert_array_equal(getattr(msg, field), value)


def test_a_command_encoded_in_python_decodes_in_c(c_program):
    out = subprocess.run(
        [str(c_program), "decode"], input=python_frame().hex() + "\n", capture_output=True, text=True, check=True
    )
    time_us, seq, state_seq, act_dim, u0, u1, system, component = out.stdout.split()
    assert (int(time_us), int(seq), int(state_seq), int(act_dim)) == (123456789, 42, 41, 1)
    assert (float(u0), float(u1), int(system), int(component)) == (1.5, -0.25, SYSTEM, COMPONENT)
