"""The mpq MAVLink 2 dialect: bindings generated from mpq.xml with pymavlink's mavgen.

mpq.xml is the one definition of the wire format. The Python bindings are generated on first use into
the cache (keyed by the XML files and the pymavlink version, so an edited mpq.xml regenerates them),
and the C headers a firmware compiles against come from the same XML (`make firmware-headers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import py_compile
import shutil
import sys
import tempfile
from pathlib import Path

import pymavlink
from pymavlink.generator import mavgen

from firmware_bridge.cli import ArgumentParser
from firmware_bridge.paths import blocking_file, build_once, cache_dir

DIALECT_XML = Path(__file__).with_name("mpq.xml")
# mpq.xml includes common.xml, which includes standard.xml and minimal.xml: pymavlink ships them.
INCLUDED_XML = ("common.xml", "standard.xml", "minimal.xml")
MAX_STATE = 48  # MPQ_STATE.state and MPQ_EPISODE_CONTROL.state: a full physics state fits one frame
MAX_ACT = 8  # MPQ_COMMAND.u
CONTROL_PERIOD_LIMITS = (1e-4, 10.0)  # s: outside, a typo (the handshake carries the period in microseconds)


def _definitions() -> list[Path]:
    shipped = Path(pymavlink.__file__).parent / "dialects" / "v20"
    return [DIALECT_XML] + [shipped / name for name in INCLUDED_XML]


def generate(language: str, output: Path) -> None:
    """Run mavgen on mpq.xml (beside copies of the XML it includes); language "Python3" or "C"."""
    with tempfile.TemporaryDirectory() as tmp:
        for xml in _definitions():
            shutil.copy(xml, tmp)
        opts = mavgen.Opts(str(output), wire_protocol="2.0", language=language, validate=True)
        log = io.StringIO()  # mavgen narrates on stdout, which the stand-in keeps for its port line
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ok = mavgen.mavgen(opts, [str(Path(tmp) / DIALECT_XML.name)])
        if not ok:
            raise RuntimeError(f"mavgen failed on {DIALECT_XML}: {log.getvalue().strip().splitlines()[-1:]}")


def _load():
    digest = hashlib.sha256(pymavlink.__version__.encode())
    for xml in _definitions():
        digest.update(xml.read_bytes())
    path = build_once(
        cache_dir() / "mavlink" / f"mavlink_mpq_{digest.hexdigest()[:16]}.py", lambda out: generate("Python3", out)
    )
    if not Path(importlib.util.cache_from_source(path)).exists():
        # Compiling the 1.8 MB module costs ~75 MB of peak memory on every import; its bytecode, once.
        # Written even under PYTHONDONTWRITEBYTECODE: the robot's memory budget matters more.
        py_compile.compile(str(path), cfile=importlib.util.cache_from_source(path), doraise=True)
    spec = importlib.util.spec_from_file_location("firmware_bridge.mavlink_mpq", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mavlink = _load()
MPQ_MESSAGE_IDS = tuple(sorted(i for i, m in mavlink.mavlink_map.items() if m.msgname.startswith("MPQ_")))


def dialect_checksum() -> int:
    """X.25 CRC over (message id as 3 bytes, CRC_EXTRA) of the MPQ messages: changes with their layout."""
    data = bytearray()
    for msgid in MPQ_MESSAGE_IDS:
        data += msgid.to_bytes(3, "little") + bytes([mavlink.mavlink_map[msgid].crc_extra])
    return mavlink.x25crc(data).crc


DIALECT_VERSION = mavlink.MPQ_DIALECT_VERSION
DIALECT_CHECKSUM = dialect_checksum()


def main() -> None:
    """`python -m firmware_bridge.dialect c OUTDIR`: the C headers for a firmware."""

    parser = ArgumentParser(prog="python -m firmware_bridge.dialect", description=main.__doc__)
    parser.add_argument("language", choices=["c"])
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    if (blocker := blocking_file(args.output)) is not None:
        parser.exit(2, f"error: {args.output}: {blocker} is a file, not a folder; give a folder for the headers\n")
    try:
        generate("C", args.output)
    except OSError as e:
        parser.exit(
            2, f"error: cannot write the headers in {args.output} ({e.strerror}): give a folder you can write\n"
        )
    print(f"C headers for mpq dialect v{DIALECT_VERSION} (checksum 0x{DIALECT_CHECKSUM:04x}) in {args.output}")


if __name__ == "__main__":
    main()
