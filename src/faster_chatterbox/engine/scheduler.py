"""Continuous batching for T3: one thread decodes every submitted request in a shared batch.

Requests from any number of callers (chunks of one long text, concurrent `synthesize` calls, server
requests) are queued; at every check of the running batch (every `check_every` tokens) finished requests
leave it and waiting ones join, up to `max_batch` requests: urgent ones first (a call's first chunk, the
audio its caller waits for first), then the others in arrival order. Urgent requests may also take
`urgent_rows` places beyond `max_batch`, so a short call never waits for the chunks of a long one to finish.
A request's tokens do not depend on what it was batched with or when it joined (engine/batch_decode.py).

The batch owns its KV cache and only reads the model, so code that decodes T3 directly (the exact preset's
loop) runs beside it, no lock needed. On CUDA it decodes on its own stream, so that T3 steps and the
callers' S3Gen/HiFT kernels (on the default stream) can run at the same time; tokens are handed over as
CPU tensors (read after the check's host sync), never as device memory of that stream.

Lifecycle: the thread runs while there are requests and exits when idle (a submit starts it again), so an
idle scheduler holds no cache, and a scheduler dropped without `close` is freed with its model once its
requests are done. At interpreter exit every scheduler still decoding is closed with cancel=True (the
thread is stopped at its next check and joined): a daemon thread left inside torch during finalization
aborts the process ("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.t3 import T3
from .batch_decode import DecodeBatch, DecodeRequest, request_problem


@dataclass(eq=False)
class _Ticket:
    request: DecodeRequest
    on_tokens: Callable[[list[int]], None] | None
    urgent: bool = False
    future: Future = field(default_factory=Future)
    reported: int = 0  # tokens already given to on_tokens


class T3Scheduler:
    """Submit `DecodeRequest`s from any thread; each gets a Future of its tokens (N,) on the CPU, the stop
    token included when sampled, as `generate_speech_tokens_batch` returns them.

    on_tokens(tokens so far), if given, runs on the scheduler thread at every check where the request got
    new tokens; if it raises, the request leaves the batch and its Future holds the exception (a consumer
    that stops listening cancels its request that way). Future.cancel() works on waiting and running
    requests alike.

    Failures stay with the requests they concern: a request that cannot join the batch (its prefill or
    token 0 raises) fails alone, the running requests go on; a batch that cannot be built fails the
    requests that were to start it; a failing step fails the requests of that batch. The next submit
    starts afresh either way.

    `close()` (or leaving `with T3Scheduler(...)`) finishes what was submitted and stops the thread;
    close(cancel=True) cancels it instead.

    urgent_rows: requests beyond `max_batch` that only urgent requests (`submit(..., urgent=True)`) may take.
    """

    def __init__(self, t3: T3, max_batch: int, check_every: int = 4, urgent_rows: int = 0, *,
                 new_batch: Callable[[int], DecodeBatch] | None = None,
                 problem: Callable[[object], str | None] | None = None):
        """new_batch(check_every), problem: another batch (DecodeBatch's interface: admit, advance, remove, empty;
        e.g. static_batch.StaticDecodeBatch, block diffusion's FlashBatch) and its request check; default the
        autoregressive DecodeBatch."""
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(urgent_rows, int) or urgent_rows < 0:
            raise ValueError(f"urgent_rows must be a non-negative integer, got {urgent_rows!r}")
        if not isinstance(check_every, int) or check_every < 1:  # here, not on the thread
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        self.t3, self.max_batch, self.check_every, self.urgent_rows = t3, max_batch, check_every, urgent_rows
        self._new_batch = new_batch or (lambda every: DecodeBatch(t3, every))
        self._problem = problem or (lambda request: request_problem(t3, request))
        self._waiting: list[_Ticket] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None  # running while there are requests
        self._pauses = 0  # open `paused()` contexts
        self._holds = 0  # open `held()` contexts
        self._closed = self._cancelling = False
        _open.add(self)

    def submit(self, request: DecodeRequest, on_tokens: Callable[[list[int]], None] | None = None, *,
               urgent: bool = False) -> Future:
        """Queue `request`; urgent: it joins before every waiting non-urgent request, in `urgent_rows` if
        the batch is full."""
        problem = self._problem(request)
        if problem:
            raise ValueError(problem)
        ticket = _Ticket(request, on_tokens, bool(urgent))
        with self._wake:
            if self._closed:
                raise RuntimeError("the T3 scheduler is closed")
            self._waiting.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="t3-scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()
        return ticket.future

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within `with`, no waiting request joins the batch (running ones go on decoding): requests
        submitted meanwhile start together, at the first check after it. `close` ends pauses."""
        with self._wake:
            self._pauses += 1
        try:
            yield
        finally:
            with self._wake:
                self._pauses -= 1
                self._wake.notify()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Within `with`, the thread computes nothing: the running batch stops at its next check and no
        request joins, until the last hold ends: a caller's first audio then renders with the CPU's cores
        to itself (a decode step beside it would take half of them). `close` ends holds."""
        with self._wake:
            self._holds += 1
        try:
            yield
        finally:
            with self._wake:
                self._holds -= 1
                self._wake.notify()

    def close(self, cancel: bool = False) -> None:
        """Stop taking requests and stop the thread once it has finished the requests already submitted,
        or, with `cancel`, once it has cancelled them (the running ones leave at the batch's next check);
        returns when the thread is gone and the batch's memory freed. Later submits raise. Idempotent."""
        with self._wake:
            self._closed = True
            waiting = []
            if cancel:
                self._cancelling = True
                waiting, self._waiting = self._waiting, []
            self._wake.notify()
            thread = self._thread
        for ticket in waiting:
            ticket.future.cancel()
        if thread is not None and thread is not threading.current_thread():  # not from an on_tokens callback
            thread.join()

    def __enter__(self) -> T3Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        running: dict[_Ticket, None] = {}  # in admission order
        try:
            self._decode(running)
        except BaseException as exc:  # outside any batch's work (e.g. making the stream): nobody waits forever
            with self._wake:
                stranded, self._waiting = [*running, *self._waiting], []
                self._thread = None
            for ticket in stranded:
                _settle(ticket.future, exc=exc)

    def _decode(self, running: dict[_Ticket, None]) -> None:
        """The thread's loop: admit, decode to the next check, report; returns when idle or cancelled."""
        batch: DecodeBatch | None = None
        device = self.t3.speech_emb.weight.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        while True:
            with self._wake:
                while not self._closed and (self._holds or self._pauses and not running):
                    self._wake.wait()
                if self._cancelling:
                    for ticket in running:
                        ticket.future.cancel()
                    self._thread = None
                    return
                joining = [] if self._pauses and not self._closed else self._take(len(running))
                if not running and not joining:  # idle: the thread ends, the batch and its cache with it
                    self._thread = None
                    return
            with torch.inference_mode(), _on(stream):
                if joining:
                    if stream is not None:  # the joining requests' tensors were made on the default stream
                        stream.wait_stream(torch.cuda.default_stream(device))
                    batch = self._admit(batch, joining, running)
                if not running:
                    batch = None
                    continue
                try:
                    self._report(batch, running, batch.advance())
                except BaseException as exc:  # the batch fails with it; the next request starts afresh
                    for ticket in running:
                        _settle(ticket.future, exc=exc)
                    running.clear()
                    batch = None

    def _take(self, n_running: int) -> list[_Ticket]:
        """The waiting requests that join now (called holding `_wake`): urgent ones while there is room
        (`urgent_rows` included), then the others while there is room within `max_batch`, each kind in
        arrival order; cancelled ones are dropped. Their Futures stay pending (cancellable) until settled."""
        waiting = [ticket for ticket in self._waiting if not ticket.future.cancelled()]
        urgent = [ticket for ticket in waiting if ticket.urgent]
        taken = urgent[: max(0, self.max_batch + self.urgent_rows - n_running)]
        room = max(0, self.max_batch - n_running - len(taken))
        taken += [ticket for ticket in waiting if not ticket.urgent][:room]
        chosen = set(taken)
        self._waiting = [ticket for ticket in waiting if ticket not in chosen]
        return taken

    def _admit(self, batch: DecodeBatch | None, joining: list[_Ticket],
               running: dict[_Ticket, None]) -> DecodeBatch | None:
        """Admit `joining` to `batch` (a new one if None) and to `running`; returns the batch. If the batch
        cannot be built, the joiners fail; if they cannot join together, each tries alone and only those
        that fail alone fail (the batch and its running requests stay as they were)."""
        if batch is None:
            try:
                batch = self._new_batch(self.check_every)
            except BaseException as exc:
                for ticket in joining:
                    _settle(ticket.future, exc=exc)
                return None
        try:
            batch.admit(joining, [ticket.request for ticket in joining])
        except BaseException as exc:
            if len(joining) == 1:
                _settle(joining[0].future, exc=exc)
            else:
                for ticket in joining:
                    self._admit(batch, [ticket], running)
            return batch
        running.update(dict.fromkeys(joining))
        return batch

    def _report(self, batch: DecodeBatch, running: dict[_Ticket, None], reports) -> None:
        gone = set()
        for ticket, tokens, finished in reports:
            if ticket.future.cancelled():
                gone.add(ticket)
                continue
            try:
                if ticket.on_tokens is not None and len(tokens) > ticket.reported:
                    ticket.reported = len(tokens)
                    ticket.on_tokens(tokens)
            except BaseException as exc:
                _settle(ticket.future, exc=exc)
                gone.add(ticket)
                continue
            if finished:
                _settle(ticket.future, result=torch.tensor(tokens, dtype=torch.long))
                del running[ticket]
        if gone:
            batch.remove(gone)
            for ticket in gone:
                running.pop(ticket, None)


_open: weakref.WeakSet[T3Scheduler] = weakref.WeakSet()  # every scheduler not yet freed


@atexit.register
def _close_at_exit() -> None:
    # atexit hooks run before finalization stops daemon threads, last registered first: this one (registered
    # after torch's import) before torch's own
    for scheduler in list(_open):
        scheduler.close(cancel=True)


def _on(stream: torch.cuda.Stream | None):
    """Run on `stream` (CUDA), or as is (None)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _settle(future: Future, result: Tensor | None = None, exc: BaseException | None = None) -> None:
    """Give `future` its result or exception unless its owner cancelled it meanwhile."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled since it was last checked
        pass
