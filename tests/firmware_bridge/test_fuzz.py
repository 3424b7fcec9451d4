"""Garbage, bit flips and valid-CRC nonsense: the parser never raises, never delivers a corrupted frame,
resynchronises, and counts exactly what was injected; the firmware stays safe on whatever gets through."""

from __future__ import annotations

import numpy as np

from firmware_bridge.dialect import DIALECT_CHECKSUM, DIALECT_VERSION, MAX_STATE, MPQ_MESSAGE_IDS, mavlink
from firmware_bridge.frames import MAGIC, FrameParser, LinkCounters
from firmware_bridge.plant import MujocoPlant
from firmware_bridge.plant_protocol import PlantProtocol

CASES = 10_000


def pack(sender, rng, seq):
    """A clean MPQ_COMMAND frame with header sequence `seq` and random (finite) content."""
    sender.seq = seq
    u = list(rng.uniform(-3, 3, 8))
    msg = sender.mpq_command_encode(int(rng.integers(1 << 40)), int(rng.integers(1, 1 << 31)), 0, 1, u)
    return bytes(msg.pack(sender))


def valid_crc_nonsense(sender, rng, seq):
    """A frame of one of our messages with random payload bytes and a correct checksum."""
    msgid = int(rng.choice(MPQ_MESSAGE_IDS))
    info = mavlink.mavlink_map[msgid]
    length = int(rng.integers(1, info.unpacker.size + 1))
    header = bytes([MAGIC, length, 0, 0, seq, sender.srcSystem, sender.srcComponent]) + msgid.to_bytes(3, "little")
    payload = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    crc = mavlink.x25crc(header[1:] + payload)
    crc.accumulate(bytes([info.crc_extra]))
    return header + payload + crc.crc.to_bytes(2, "little")


def flip_one_bit(frame, rng):
    """A single-bit error that does not create a new magic byte inside the frame (kept exact to count)."""
    while True:
        position = int(rng.integers(len(frame)))
        bad = bytearray(frame)
        bad[position] ^= 1 << int(rng.integers(8))
        if MAGIC not in bad[1:]:
            return bytes(bad), position


def test_parser_resyncs_never_delivers_corruption_and_counts_exactly():
    rng = np.random.default_rng(20261126)
    sender = mavlink.MAVLink(None, srcSystem=255, srcComponent=191)
    stream, expected_frames = bytearray(), []
    expected = LinkCounters()
    seq = 0
    non_magic = np.array([b for b in range(256) if b != MAGIC], dtype=np.uint8)
    for case in range(CASES):
        kind = case % 3
        if kind == 0:  # random bytes between frames
            garbage = rng.choice(non_magic, int(rng.integers(1, 40))).tobytes()
            stream += garbage
            expected.bytes_skipped += len(garbage)
        elif kind == 1:  # a bit flip inside a frame: it must never come out
            if seq == MAGIC:  # header sequence 253 is itself a magic byte: corrupt the next frame instead
                stream += (clean := pack(sender, rng, seq))
                expected_frames.append(clean)
                seq += 1
            frame = pack(sender, rng, seq)
            while MAGIC in frame[1:]:  # keep the count exact: no second magic byte to rescan from
                frame = pack(sender, rng, seq)
            bad, position = flip_one_bit(frame, rng)
            stream += bad
            expected.bytes_skipped += len(bad)
            expected.crc_errors += position != 0  # a flipped magic byte is no frame at all
            expected.seq_gaps += 1  # the receiver never sees this sequence number
            seq = (seq + 1) % 256
        else:  # a valid-CRC frame with nonsense inside: it is a frame, so it is delivered
            frame = valid_crc_nonsense(sender, rng, seq)
            stream += frame
            expected_frames.append(frame)
            seq = (seq + 1) % 256
        clean = pack(sender, rng, seq)  # every case is followed by a good frame
        stream += clean
        expected_frames.append(clean)
        seq = (seq + 1) % 256
    flush = rng.choice(non_magic, 300).tobytes()  # completes any frame a flipped length left waiting
    stream += flush
    expected.bytes_skipped += len(flush)

    parser = FrameParser(mavlink.MAVLink(None))
    delivered, position = [], 0
    while position < len(stream):
        chunk = int(rng.integers(1, 64))
        delivered += parser.feed(bytes(stream[position : position + chunk]))
        position += chunk

    assert [bytes(m.get_msgbuf()) for m in delivered] == expected_frames
    expected.frames = len(expected_frames)
    assert parser.counters == expected
    assert expected.crc_errors > 3000 and expected.bytes_skipped > 100_000  # the fuzzing really happened


def test_firmware_stays_safe_on_every_valid_crc_frame():
    """Whatever passes the checksum reaches the firmware: it never raises, the actuators stay finite and
    in range, and a non-finite command always leaves the plant in the safe state."""
    rng = np.random.default_rng(7)
    sender = mavlink.MAVLink(None, srcSystem=255, srcComponent=191)
    firmware = PlantProtocol(MujocoPlant.for_task("pendulum"), "pendulum", "lockstep", send=lambda msg: None)
    parser = FrameParser(mavlink.MAVLink(None))
    handshake = sender.mpq_handshake_encode(
        DIALECT_VERSION, DIALECT_CHECKSUM, b"pendulum", 3, 1, 50000, mavlink.MPQ_ROLE_HOST, 0
    )
    arm = sender.mpq_episode_control_encode(0, 0, mavlink.MPQ_EPISODE_REARM, 0, 1, [0.0] * MAX_STATE)
    nonfinite_latches, command_seq = 0, 10**9
    for case in range(CASES):
        if case % 50 == 0:  # keep it armed so commands get as far as they can
            for msg in parser.feed(bytes(handshake.pack(sender)) + bytes(arm.pack(sender))):
                firmware.handle(msg, now=case * 0.01)
        if case % 7 == 3:  # a well-formed reset to a hostile start state
            values = list(rng.choice([0.1, -3.0, 1e4, -1e20, 1e20, np.nan, np.inf], 3)) + [0.0] * (MAX_STATE - 3)
            action = mavlink.MPQ_EPISODE_RESET_GIVEN
            frame = bytes(sender.mpq_episode_control_encode(1, 0, action, 3, case, values).pack(sender))
        elif case % 5 == 0:  # a well-formed command answering the current state, with a hostile value
            command_seq += 1
            value = rng.choice([np.nan, np.inf, -np.inf, 1e30, -7.5, 0.3])
            frame = bytes(
                sender.mpq_command_encode(0, command_seq, firmware.state_seq, 1, [value] + [0.0] * 7).pack(sender)
            )
        else:
            frame = valid_crc_nonsense(sender, rng, case % 256)
        for msg in parser.feed(frame):
            was_latched = firmware.failsafe
            firmware.handle(msg, now=case * 0.01)
            ctrl = firmware.plant.data.ctrl
            assert np.all(np.isfinite(ctrl)) and np.all(np.abs(ctrl) <= 2.0)
            assert np.all(np.isfinite(firmware.plant.state))
            assert firmware.plant.invalid_state(firmware.plant.state) is None or firmware.failsafe
            if firmware.failsafe:
                assert not firmware.armed and np.all(ctrl == 0)
            nonfinite_latches += firmware.failsafe == mavlink.MPQ_FAILSAFE_NONFINITE_COMMAND and not was_latched
    counts = firmware.counts
    assert nonfinite_latches > 50 and counts["commands_clipped"] > 50 and counts["commands_applied"] > 100
    assert counts["commands_rejected"] > 1000
