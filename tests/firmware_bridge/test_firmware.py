"""The firmware rules with a simulated clock: exact watchdog timing, stale commands, plant faults."""

from __future__ import annotations

import numpy as np

from firmware_bridge.dialect import DIALECT_CHECKSUM, DIALECT_VERSION, MAX_STATE, mavlink
from firmware_bridge.plant import MujocoPlant
from firmware_bridge.plant_protocol import PlantProtocol

HOST = mavlink.MAVLink(None, srcSystem=255, srcComponent=191)


def armed_firmware(task="pendulum", mode="realtime", state=(0.0, 0.2, 0.0)):
    sent = []
    plant = MujocoPlant.for_task(task)
    firmware = PlantProtocol(plant, task, mode, send=sent.append)
    dims = (plant.state_dim, plant.model.nu)
    firmware.handle(
        HOST.mpq_handshake_encode(DIALECT_VERSION, DIALECT_CHECKSUM, task.encode(), *dims, 0, 0, 0), now=0.0
    )
    state = list(state) + [0.0] * (MAX_STATE - len(state))
    firmware.handle(HOST.mpq_episode_control_encode(1, 0, mavlink.MPQ_EPISODE_RESET_GIVEN, dims[0], 1, state), 0.0)
    firmware.handle(HOST.mpq_episode_control_encode(1, 0, mavlink.MPQ_EPISODE_ARM, 0, 2, [0.0] * MAX_STATE), now=0.0)
    assert firmware.armed
    return firmware, sent


def command(seq, state_seq, u=0.5):
    return HOST.mpq_command_encode(0, seq, state_seq, 1, [u] + [0.0] * 7)


def test_watchdog_trips_exactly_after_its_timeout_and_holds():
    firmware, _ = armed_firmware()
    period, timeout = 0.05, 0.15
    firmware.tick(0.0)
    firmware.handle(command(1, firmware.state_seq), now=0.01)
    assert firmware.deadline(0.01) <= timeout  # the loop wakes up in time to check
    firmware.tick(0.01 + timeout)  # exactly the timeout: not yet
    assert firmware.failsafe == mavlink.MPQ_FAILSAFE_NONE and firmware.armed
    firmware.tick(0.01 + timeout + 1e-6)
    assert firmware.failsafe == mavlink.MPQ_FAILSAFE_WATCHDOG and not firmware.armed
    assert np.all(firmware.plant.data.ctrl == 0) and firmware.counts["watchdog_trips"] == 1
    firmware.handle(command(2, firmware.state_seq), now=0.2)  # commands resume: still latched
    assert firmware.failsafe == mavlink.MPQ_FAILSAFE_WATCHDOG and np.all(firmware.held == 0)
    firmware.tick(0.2 + period)
    assert firmware.counts["watchdog_trips"] == 1  # latched, not re-counted


def test_realtime_refuses_commands_planned_from_old_states():
    firmware, _ = armed_firmware()
    firmware.watchdog_timeout = 10.0  # this test is about stale states, not silence
    for k in range(1, 6):  # five periods pass: the plant streams states 2..6
        firmware.tick(k * 0.05)
    old = firmware.state_seq - 4
    firmware.handle(command(1, old), now=0.26)
    assert firmware.counts["commands_rejected"] == 1 and firmware.counts["commands_applied"] == 0
    firmware.handle(command(2, firmware.state_seq - 1), now=0.27)
    assert firmware.counts["commands_applied"] == 1


def test_lockstep_refuses_a_duplicated_command_so_it_never_steps_twice():
    firmware, _ = armed_firmware(mode="lockstep")
    seq = firmware.state_seq
    firmware.handle(command(1, seq), now=0.0)
    state_after_one = firmware.plant.state.copy()
    firmware.handle(command(2, seq), now=0.0)  # answers the same state again
    np.testing.assert_array_equal(firmware.plant.state, state_after_one)
    assert firmware.counts["commands_rejected"] == 1


def test_a_plant_fault_latches_the_safe_state():
    firmware, sent = armed_firmware(task="cartpole", mode="lockstep", state=(0.0, 0.0, 0.1, 0.0, 0.0))
    firmware.plant.data.qvel[:] = [1e20, 1e20]  # a diverging simulation (or a sensor gone mad)
    firmware.handle(command(1, firmware.state_seq), now=0.0)
    assert firmware.plant.fault() is not None
    assert firmware.failsafe == mavlink.MPQ_FAILSAFE_PLANT_FAULT and not firmware.armed
    assert any(m.get_type() == "MPQ_STATUS" and m.failsafe == mavlink.MPQ_FAILSAFE_PLANT_FAULT for m in sent)
