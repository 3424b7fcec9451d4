"""MAVLink 2 signing that a forger cannot poison: forged, replayed and unsigned frames cost a counter each."""

from __future__ import annotations

from firmware_bridge.dialect import mavlink
from firmware_bridge.frames import FrameParser, enable_signing

KEY, WRONG = bytes(range(32)), bytes(range(1, 33))


def sender(key: bytes | None, system: int = 1):
    mav = mavlink.MAVLink(None, srcSystem=system, srcComponent=1)
    if key is not None:
        enable_signing(mav, key)
    return mav


def heartbeat(mav) -> bytes:
    return bytes(mav.heartbeat_encode(0, 8, 0, 0, 0, 3).pack(mav))


def test_forged_replayed_and_unsigned_frames_are_dropped_and_every_real_frame_is_delivered():
    real, forger, unsigned = sender(KEY), sender(WRONG), sender(None)
    forger.signing.timestamp = real.signing.timestamp + 10**9  # hours ahead: it would poison the stream
    receiver = mavlink.MAVLink(None, srcSystem=2, srcComponent=1)
    enable_signing(receiver, KEY, sign_outgoing=False)
    parser = FrameParser(receiver)
    delivered, replay = 0, None
    for i in range(1000):
        frame = heartbeat(real)
        replay = replay or (frame if i == 10 else None)
        delivered += len(parser.feed(frame))
        if i == 20:
            assert parser.feed(heartbeat(forger)) == []  # a forged frame with a later timestamp
            assert parser.feed(replay) == []  # a real frame sent again
            assert parser.feed(heartbeat(unsigned)) == []
    assert delivered == 1000
    assert parser.counters.signature_errors == 3 and parser.counters.frames == 1000
