"""Host and stand-in over a real pty: lockstep steps, every state answered, the plant is the MuJoCo plant."""

from __future__ import annotations

import numpy as np

from firmware_bridge.link import Link
from firmware_bridge.plant import MujocoPlant


def controller(state):
    """A simple energy-pumping swing-up with a PD catch: enough to visit the whole state space."""
    _, theta, thetadot = state  # time, qpos, qvel
    if np.cos(theta) > 0.8:
        return np.clip([-8.0 * np.sin(theta) - 1.5 * thetadot], -2, 2)
    return np.clip([2.0 * np.sign(thetadot * np.cos(theta) + 1e-9)], -2, 2)


def test_1000_lockstep_pendulum_steps_every_state_answered_and_equal_to_direct_mujoco(standin):
    plant_process = standin("--task", "pendulum")
    link = Link(plant_process.port, "pendulum", state_dim=3, act_dim=1)
    link.handshake()
    first = link.reset(episode_id=7, state=[0.0, np.pi - 0.1, 0.0])
    link.arm()

    direct = MujocoPlant.for_task("pendulum")
    direct.reset(first.state)  # the float32 start the plant received
    state, seq = first, first.seq
    for _ in range(1000):
        u = np.float32(controller(state.state)).astype(np.float64)  # what goes on the wire
        sent = link.send_command(u, state.seq)
        state = link.recv_state(timeout=2.0)
        assert state is not None, "a command went unanswered"
        assert state.command_seq == sent and state.seq == seq + 1 and state.episode_id == 7
        seq = state.seq
        direct.step(u)
    np.testing.assert_array_equal(state.state, direct.state.astype(np.float32))
    stats = link.stats()
    assert stats["seq_gaps"] == 0 and stats["crc_errors"] == 0 and stats["bytes_skipped"] == 0
    assert stats["rtt_us_p50"] is not None
    link.close()
    code, report = plant_process.stop(grace=10.0)  # it exits by itself once it sees the port closed
    assert code == 0 and report["stopped"] == "host closed the port"  # the host went away: a clean exit
    assert report["commands_applied"] == 1000 and report["commands_rejected"] == 0 and report["seq_gaps"] == 0
