"""The render queue: S3Gen renders across calls, how many run at once, who goes next, who shares a batch.

A caller submits its chunks (rows: whatever the render function takes) under a key, the arguments every row of
one render shares (the flow solve), and waits for its own rows' audio. Whoever finds a free slot takes the row
at the head of the line and up to `batch` - 1 more rows waiting with the same key, from any caller, renders
them as one batch and hands each caller its rows. On a GPU a padded batch of 8 costs little more than one
row; on a CPU it costs more than the rows one by one (0.94x, BENCHMARKS.md section 7: compute-bound, and
padding adds work), so the CPU's settings keep `batch` 1 and each render is one row, as before batching.

A render of a call's first chunk is what that caller waits for before hearing anything, while a render of
a long job's later chunk only keeps a buffer ahead of playback; so the line puts urgent rows (first chunks)
before every waiting non-urgent one, each kind first come first served.

A render that raises fails every caller with a row in that batch; a caller interrupted while it waits
(Ctrl-C, an exception raised in its thread) takes its rows still waiting out of the line: they are never
rendered, and the others go on. The queue has no thread: the callers render.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Ticket:
    """One submission: its key, its rows' outputs as they come, or the error of a render they were in."""

    key: Hashable
    outputs: list
    missing: int  # rows not rendered yet
    in_line: int  # rows still waiting in line (not taken into a render)
    error: BaseException | None = None


@dataclass(order=True)
class _Entry:
    place: tuple[bool, int]  # (not urgent, arrival): the line's order
    ticket: _Ticket = field(compare=False)
    index: int = field(compare=False)  # the row's place in its submission
    row: Any = field(compare=False)


class RenderQueue:
    """`slots` renders at once, each of up to `batch` rows with one key: render(key, rows) -> one output per row."""

    def __init__(self, slots: int, batch: int, render: Callable[[Hashable, list], Sequence]):
        for name, n in (("render slots", slots), ("render batch", batch)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        self.slots, self.batch, self._render = slots, batch, render
        self._free = slots
        self._pauses = 0  # open `paused()` contexts
        self._line: list[_Entry] = []  # sorted by place: urgent first, then by arrival
        self._arrivals = itertools.count()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """Rows waiting in line now."""
        with self._changed:
            return len(self._line)

    def render(self, key: Hashable, rows: Sequence, *, urgent: bool = False) -> list:
        """The outputs of `rows`, in order, rendered with `key` (rows of other callers with an equal key may share
        their batches); urgent: they go before every waiting non-urgent row. Raises what their render raised."""
        ticket = _Ticket(key, [None] * len(rows), missing=len(rows), in_line=len(rows))
        with self._changed:
            for index, row in enumerate(rows):
                bisect.insort(self._line, _Entry((not urgent, next(self._arrivals)), ticket, index, row))
            self._changed.notify_all()
        try:
            while (batch := self._next_batch(ticket)) is not None:
                self._run(batch)
        except BaseException:  # interrupted, or failed: its rows still waiting leave the line
            with self._changed:
                self._line = [e for e in self._line if e.ticket is not ticket]
                ticket.in_line = 0
                self._changed.notify_all()
            raise
        return ticket.outputs

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within `with`, no render starts (running ones go on): rows submitted meanwhile are batched together
        at the first check after it."""
        with self._changed:
            self._pauses += 1
        try:
            yield
        finally:
            with self._changed:
                self._pauses -= 1
                self._changed.notify_all()

    def _next_batch(self, ticket: _Ticket) -> list[_Entry] | None:
        """Wait until `ticket` is done (None; raises its error) or, while some of its rows wait in line, a slot is
        free: then take the head of the line and the rows waiting with its key (returned, the slot held)."""
        with self._changed:
            while True:
                if ticket.error is not None:
                    raise ticket.error
                if not ticket.missing:
                    return None
                if ticket.in_line and self._free and not self._pauses:
                    break
                self._changed.wait()
            key = self._line[0].ticket.key
            batch = [e for e in self._line if e.ticket.key == key][: self.batch]
            taken = {id(e) for e in batch}
            self._line = [e for e in self._line if id(e) not in taken]
            for entry in batch:
                entry.ticket.in_line -= 1
            self._free -= 1
            return batch

    def _run(self, batch: list[_Entry]) -> None:
        """Render `batch` in the slot taken for it, hand each caller its rows (or the error), free the slot."""
        try:
            outputs = list(self._render(batch[0].ticket.key, [e.row for e in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f"the render returned {len(outputs)} outputs for {len(batch)} rows")
        except BaseException as exc:
            # an interrupt of this thread (not an Exception) is this caller's; the others get a plain error
            error = exc if isinstance(exc, Exception) else RuntimeError(f"a render was interrupted ({exc!r})")
            with self._changed:
                self._free += 1
                for entry in batch:
                    entry.ticket.error = entry.ticket.error or error
                self._changed.notify_all()
            if not isinstance(exc, Exception):
                raise
            return
        with self._changed:
            self._free += 1
            for entry, output in zip(batch, outputs):
                entry.ticket.outputs[entry.index] = output
                entry.ticket.missing -= 1
            self._changed.notify_all()
