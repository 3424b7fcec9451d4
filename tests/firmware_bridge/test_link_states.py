"""The host end takes only states it can plan on: non-finite ones are dropped and counted like a bad checksum,
copies the plant sent again are dropped, and states lost on the way are counted by their 32-bit seq."""

from __future__ import annotations

import os
import tty

import numpy as np

from firmware_bridge.dialect import MAX_STATE, mavlink
from firmware_bridge.link import Link
from onboard.recorder import strict_json


def plant_state(mav, seq: int, values) -> bytes:
    message = mav.mpq_state_encode(
        time_us=0,
        seq=seq,
        command_seq=0,
        episode_id=1,
        reset_request=1,
        state_dim=len(values),
        armed=0,
        failsafe=0,
        state=list(values) + [0.0] * (MAX_STATE - len(values)),
    )
    return bytes(message.pack(mav))


def test_nonfinite_repeated_and_lost_states(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    link = Link(os.ttyname(slave), "pendulum", 3, 1)
    plant = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    frames = [
        plant_state(plant, 1, [0.0, 1.0, 0.5]),
        plant_state(plant, 1, [0.0, 1.0, 0.5]),  # the same state sent again
        plant_state(plant, 2, [0.05, np.nan, 0.5]),  # valid checksum, NaN inside
        plant_state(plant, 3, [0.1, np.inf, 0.0]),
        plant_state(plant, 6, [0.25, 1.2, 0.4]),  # 4 and 5 lost on the way
    ]
    os.write(master, b"".join(frames))
    got = [link.recv_state(1.0), link.recv_state(1.0), link.recv_state(0.2)]
    assert [s.seq for s in got[:2]] == [1, 6] and got[2] is None
    assert np.all(np.isfinite(got[1].state))
    assert link.counts["states_rejected"] == 2 and link.counts["states_missed"] == 2 + 2  # 2, 3 rejected; 4, 5 lost
    link.close()
    os.close(master)
    os.close(slave)


def test_summaries_are_strict_json():
    assert strict_json(dict(cost=float("nan"), link=dict(rtt=float("inf")), steps=3)) == (
        '{"cost": null, "link": {"rtt": null}, "steps": 3}'
    )
