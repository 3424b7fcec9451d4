"""Zero the cubins for other GPUs than one SM version in a shared library's fat binaries, in place.

Why: onnxruntime-gpu's CUDA provider is 284 MB, two thirds of it machine code for GPUs the device
machine does not have, and a device call carries 64 MiB. Zeroed payloads compress to nothing, and the
layout stays as built (every container and entry header kept), so the CUDA driver still finds the
sm_90 cubins it loads on an H100 or H200. PTX entries are kept. Fat binary layout: a 16-byte container
header (magic 0xBA55ED50, version 1, header size 16, size of the entries), then entries, each a
header (kind 1 PTX or 2 ELF, header size, payload size, SM version at byte 28) and its payload.

    python tools/gpu_check/prune_fatbin.py libonnxruntime_providers_cuda.so 90
"""

import collections
import mmap
import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)
ELF = 2


def entries(view, start: int):
    """The (kind, sm, payload offset, payload size) of the container at start, or None if it is not one."""
    _, version, header_size, size = struct.unpack_from("<IHHQ", view, start)
    if version != 1 or header_size != 16 or start + 16 + size > len(view):
        return None
    found, at, end = [], start + 16, start + 16 + size
    while at < end:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", view, at)
        if kind not in (1, 2) or not 64 <= entry_header <= 512:
            return None
        found.append((kind, struct.unpack_from("<I", view, at + 28)[0], at + entry_header, payload))
        at += entry_header + payload
    return found if at == end else None


def main(path: str, keep: int) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as view:
        kept, zeroed, containers = collections.Counter(), 0, 0
        at = view.find(MAGIC)
        while at != -1:
            found = entries(view, at)
            if found is None:
                at = view.find(MAGIC, at + 4)
                continue
            containers += 1
            for kind, sm, offset, size in found:
                if kind == ELF and sm != keep:
                    view[offset : offset + size] = bytes(size)
                    zeroed += size
                else:
                    kept[sm] += size
            at = view.find(MAGIC, found[-1][2] + found[-1][3] if found else at + 16)
        view.flush()
    print(f"{containers} fat binaries: zeroed {zeroed / 1e6:.0f} MB of cubins, kept {dict(kept)} bytes by SM")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
