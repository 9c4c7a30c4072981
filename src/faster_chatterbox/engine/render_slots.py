"""Render slots: how many S3Gen renders run at once across calls, and who goes next.

A render of a call's first chunk is what that caller waits for before hearing anything, while a render of
a long job's later chunk only keeps a buffer ahead of playback; so when renders queue for a slot, urgent
ones (first chunks) take the next free slot before any waiting non-urgent one, each kind first come first
served.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RenderSlots:
    """`n` slots, taken with `with slots.take(urgent=...)`."""

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"render slots must be a positive integer, got {n!r}")
        self.n = n
        self._free = n
        self._line: list[tuple[bool, int]] = []  # heap of (not urgent, arrival): who is waiting, first first
        self._arrivals = itertools.count()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """Renders waiting for a slot now."""
        with self._changed:
            return len(self._line)

    @contextmanager
    def take(self, urgent: bool = False) -> Iterator[None]:
        """Hold a slot within `with`: wait until a slot is free and no one before this render in line
        (urgent ones first, then by arrival) is still waiting."""
        with self._changed:
            place = (not urgent, next(self._arrivals))
            heapq.heappush(self._line, place)
            try:
                while not self._free or self._line[0] != place:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting: leave the line, let the next one check
                self._line.remove(place)
                heapq.heapify(self._line)
                self._changed.notify_all()
                raise
            heapq.heappop(self._line)
            self._free -= 1
            self._changed.notify_all()  # the next in line may take another free slot
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()
