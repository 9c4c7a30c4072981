"""Continuous batching for T3: one thread decodes every submitted request in a shared batch.

Requests from any number of callers (chunks of one long text, concurrent `synthesize` calls, server
requests) are queued; at every check of the running batch (every `check_every` tokens) finished requests
leave it and waiting ones join, up to `max_batch` requests, in arrival order. A request's tokens do not
depend on what it was batched with or when it joined (engine/batch_decode.py).

The thread holds `lock` (the model's KV cache) while its batch has requests, so code that decodes T3
directly (the exact preset's loop) takes turns with it. On CUDA it decodes on its own stream, so that T3
steps and the callers' S3Gen/HiFT kernels (on the default stream) can run at the same time; tokens are
handed over as CPU tensors (read after the check's host sync), never as device memory of that stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
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
    future: Future = field(default_factory=Future)
    reported: int = 0  # tokens already given to on_tokens


class T3Scheduler:
    """Submit `DecodeRequest`s from any thread; each gets a Future of its tokens (N,) on the CPU, the stop
    token included when sampled, as `generate_speech_tokens_batch` returns them.

    on_tokens(tokens so far), if given, runs on the scheduler thread at every check where the request got
    new tokens; if it raises, the request leaves the batch and its Future holds the exception (a consumer
    that stops listening cancels its request that way). Future.cancel() works on waiting and running
    requests alike.
    """

    def __init__(self, t3: T3, max_batch: int, lock: threading.Lock, check_every: int = 4):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(check_every, int) or check_every < 1:  # here, not on the thread
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        self.t3, self.max_batch, self.lock, self.check_every = t3, max_batch, lock, check_every
        self._waiting: list[_Ticket] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: DecodeRequest, on_tokens: Callable[[list[int]], None] | None = None) -> Future:
        problem = request_problem(self.t3, request)
        if problem:
            raise ValueError(problem)
        ticket = _Ticket(request, on_tokens)
        with self._wake:
            if self._closed:
                raise RuntimeError("the T3 scheduler is closed")
            self._waiting.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="t3-scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()
        return ticket.future

    def close(self) -> None:
        """Finish the requests already submitted, then stop the thread; later submits raise."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _serve(self) -> None:
        batch: DecodeBatch | None = None
        running: dict[_Ticket, None] = {}
        device = self.t3.speech_emb.weight.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        while True:
            with self._wake:
                while not self._waiting and not running and not self._closed:
                    self._wake.wait()
                if not self._waiting and not running:
                    return  # closed and drained
                joining = self._take(len(running))
            try:
                if batch is None:
                    self.lock.acquire()
                    batch = DecodeBatch(self.t3, self.check_every)
                with torch.inference_mode(), _on(stream):
                    if joining:
                        if stream is not None:  # the joining requests' tensors were made on the default stream
                            stream.wait_stream(torch.cuda.default_stream(device))
                        batch.admit(joining, [t.request for t in joining])
                        running.update(dict.fromkeys(joining))
                    self._report(batch, running, batch.advance())
            except BaseException as exc:  # the whole batch fails with it; the next request starts afresh
                for ticket in [*running, *joining]:
                    _settle(ticket.future, exc=exc)
                running.clear()
            if not running and batch is not None:
                batch = None
                self.lock.release()

    def _take(self, n_running: int) -> list[_Ticket]:
        """The waiting requests that join now (called holding `_wake`): the first ones, while there is room;
        cancelled ones are dropped. Their Futures stay pending (cancellable) until settled."""
        waiting = [ticket for ticket in self._waiting if not ticket.future.cancelled()]
        room = self.max_batch - n_running
        self._waiting = waiting[room:]
        return waiting[:room]

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
