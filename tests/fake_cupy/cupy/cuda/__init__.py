"""Streams with begin/end capture, graphs that count their launches, and the memory pool's names."""

import contextlib

from . import runtime  # noqa: F401

CAPTURING = [False]
LAUNCHES = []


class Graph:
    def __init__(self, number):
        self.number = number

    def launch(self, stream=None):
        LAUNCHES.append(self.number)


class Stream:
    graphs = 0

    def __init__(self, non_blocking=False):
        self.ptr = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self, mode=None):
        assert not CAPTURING[0], "capture begun twice"
        CAPTURING[0] = True

    def end_capture(self):
        assert CAPTURING[0], "capture ended while not capturing"
        CAPTURING[0] = False
        Stream.graphs += 1
        return Graph(Stream.graphs)

    def synchronize(self):
        assert not CAPTURING[0], "fake cupy: a stream synchronisation during capture"


Stream.null = Stream()
Stream.null.ptr = 0


class MemoryPool:
    def __init__(self, allocator=None):
        self.allocator = allocator

    def malloc(self, size):
        return None


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


class Device:
    id = 0
    mem_info = (1 << 33, 1 << 34)
    attributes = {"MultiProcessorCount": 132}  # an H100's
