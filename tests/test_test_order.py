"""The suite's own scheduling aid (tests/conftest.py): long tests first in each xdist worker's share."""

from __future__ import annotations

import pytest

from tests.conftest import long_first


def shares(ordered: list, workers: int) -> list[list]:
    """How worksteal splits a collection at the start: n // w to the first worker, the rest likewise."""
    out, left = [], list(ordered)
    for i in range(workers):
        n = len(left) // (workers - i)
        out.append(left[:n])
        left = left[n:]
    return out


@pytest.mark.parametrize("n, n_long, workers", [(10, 4, 2), (10, 1, 2), (3, 3, 2), (5, 2, 16), (7, 5, 3), (0, 0, 2)])
def test_each_share_starts_with_its_turn_of_the_long_tests_and_every_test_runs_once(n, n_long, workers):
    items = [f"short{i}" for i in range(n - n_long)]
    for j in range(n_long):  # spread through the collection, as the marked tests are through the files
        items.insert(min(3 * j, len(items)), f"long{j}")
    ordered = long_first(items, lambda x: x.startswith("long"), workers)
    assert sorted(ordered) == sorted(items)
    split = shares(ordered, workers)
    counts = [sum(x.startswith("long") for x in share) for share in split]
    for share, count in zip(split, counts, strict=True):
        assert all(x.startswith("long") for x in share[:count])  # a share's long tests come first
    with_room = [count for share, count in zip(split, counts, strict=True) if count < len(share)]
    assert not with_room or max(counts) - min(with_room) <= 1  # dealt in turn: at most one more long test
    shorts = [x for x in ordered if x.startswith("short")]
    assert shorts == [x for x in items if x.startswith("short")]  # the rest keep their order
