"""MAVLink 2 framing for both ends of the link: bytes in, messages out, every byte accounted for.

pymavlink's own parser drops a whole claimed frame when its checksum fails, so one flipped length
byte can swallow the good frames behind it. This scanner instead rejects a bad candidate by its first
byte and rescans, so it resynchronises at the next real frame; pymavlink still decodes the payload
and checks MAVLink 2 signatures. It never raises on input.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware_bridge.dialect import mavlink

MAGIC = mavlink.PROTOCOL_MARKER_V2
HEADER_LEN = 10
CHECKSUM_LEN = 2
SIGNATURE_LEN = mavlink.MAVLINK_SIGNATURE_BLOCK_LEN
SIGNED = mavlink.MAVLINK_IFLAG_SIGNED


MAVLINK_EPOCH = 1420070400  # 2015-01-01, the zero of MAVLink 2 signing timestamps (10 us units)


def enable_signing(mav: mavlink.MAVLink, key: bytes, sign_outgoing: bool = True) -> None:
    """MAVLink 2 signing with `key`: frames without a valid signature are then rejected on receive.

    The timestamp starts from the clock, as the spec asks, so a restarted sender is not taken for a replay.
    """
    if len(key) != 32:
        raise ValueError(f"a MAVLink 2 signing key has 32 bytes, this one {len(key)}")
    mav.signing.secret_key = key
    mav.signing.sign_outgoing = sign_outgoing
    mav.signing.timestamp = int((time.time() - MAVLINK_EPOCH) * 1e5)


def read_signing_key(path: Path) -> bytes:
    """A signing key file holds 32 raw bytes or 64 hex digits."""
    data = path.read_bytes()
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode())
        except ValueError:
            pass
    if len(data) == 32:
        return data
    raise ValueError(f"signing key file {path} must hold 32 bytes or 64 hex digits, found {len(data)} bytes")


@dataclass
class LinkCounters:
    frames: int = 0  # valid frames delivered
    crc_errors: int = (
        0  # candidates that failed the checksum (an unknown message id or flag counts: it can't be checked)
    )
    bytes_skipped: int = 0  # bytes outside delivered frames and signature-rejected frames
    signature_errors: int = 0  # valid frames dropped for a missing or wrong signature (signing on)
    seq_gaps: int = 0  # frames lost, from the senders' MAVLink sequence numbers

    def to_dict(self) -> dict:
        return asdict(self)


def signature_matches(key: bytes, frame: bytes) -> bool:
    """Whether a signed frame's 6-byte signature is SHA-256(key + everything before it), as MAVLink 2 signs.

    Checked before pymavlink's own check, which stores a frame's timestamp before it checks the signature
    (pymavlink 2.4.50): one forged frame with a later timestamp would make it refuse every real frame after.
    """
    return hmac.compare_digest(hashlib.sha256(key + bytes(frame[:-6])).digest()[:6], bytes(frame[-6:]))


class FrameParser:
    """Feed it whatever the port gave; get back the decoded messages. `counters` say what was dropped."""

    def __init__(self, mav: mavlink.MAVLink):
        self.mav = mav  # decodes payloads and checks signatures with its signing state
        self.buffer = bytearray()
        self.counters = LinkCounters()
        self._last_seq: dict[tuple[int, int], int] = {}

    def feed(self, data: bytes) -> list:
        self.buffer += data
        messages = []
        while True:
            start = self.buffer.find(MAGIC)
            if start < 0:
                self._skip(len(self.buffer))
                return messages
            self._skip(start)
            if len(self.buffer) < HEADER_LEN:
                return messages
            length, incompat = self.buffer[1], self.buffer[2]
            msgid = int.from_bytes(self.buffer[7:10], "little")
            info = mavlink.mavlink_map.get(msgid)
            if info is None or incompat & ~SIGNED or length > info.unpacker.size:
                self._reject_candidate()  # no such message, unknown flags, or longer than it can be
                continue
            total = HEADER_LEN + length + CHECKSUM_LEN + (SIGNATURE_LEN if incompat & SIGNED else 0)
            if len(self.buffer) < total:
                return messages  # wait for the rest
            crc = mavlink.x25crc(self.buffer[1 : HEADER_LEN + length])  # checked here: pymavlink can be told
            crc.accumulate(bytes([info.crc_extra]))  # to skip it (MAV_IGNORE_CRC), a firmware must not
            if crc.crc != int.from_bytes(self.buffer[HEADER_LEN + length : HEADER_LEN + length + 2], "little"):
                self._reject_candidate()
                continue
            frame = bytearray(self.buffer[:total])
            if (
                incompat & SIGNED
                and self.mav.signing.secret_key is not None
                and not signature_matches(self.mav.signing.secret_key, frame)
            ):
                self.counters.signature_errors += 1  # forged: dropped before pymavlink's check sees its timestamp
                self._skip(total)
                continue
            try:
                message = self.mav.decode(frame)  # payload, and the signature when signing is on
            except mavlink.MAVError as error:
                if "signature" in str(error).lower():  # checksum good, signature missing or wrong
                    self.counters.signature_errors += 1
                    self._skip(total)
                else:
                    self._reject_candidate()
                continue
            except Exception:  # a payload pymavlink cannot unpack: treat as a bad frame, never raise
                self._reject_candidate()
                continue
            del self.buffer[:total]
            self.counters.frames += 1
            self._track_sequence(message)
            messages.append(message)

    def _skip(self, n: int) -> None:
        if n:
            self.counters.bytes_skipped += n
            del self.buffer[:n]

    def _reject_candidate(self) -> None:
        """A magic byte that did not start a valid frame: count it and rescan from the next byte."""
        self.counters.crc_errors += 1
        self._skip(1)

    def _track_sequence(self, message) -> None:
        sender = (message.get_srcSystem(), message.get_srcComponent())
        seq = message.get_seq()
        last = self._last_seq.get(sender)
        if last is not None:
            self.counters.seq_gaps += (seq - last - 1) % 256
        self._last_seq[sender] = seq
