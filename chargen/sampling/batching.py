"""Sampling many callers' requests together: one worker thread per model advances the rows of
every request it holds as one batch (chargen.sampling.RowEngine), one network step for all of
them per character, so concurrent requests share the network's steps instead of queueing. With
`workers`, the engine runs in worker processes (chargen.sampling.parallel.ProcessEngine) and
the thread only hands out rows and takes results: the steps leave this process's GIL to HTTP.

Continuous batching: a request that arrives while others are being drawn joins the batch at the
next step (a few milliseconds), and leaves it as soon as its own rows have ended; it never waits
for a whole batch to finish. When the worker is idle, the first request to arrive waits the
batching window (`window`, 2 ms by default) for others to arrive with it. At most `max_rows` rows
advance together (memory and step time); requests beyond that wait their turn in arrival order.
With `max_draws`, a request that would draw more than that many samples in all (a rare
constraint redraws) ends with a SamplingError instead of holding the batch for minutes.
A request that needs more draws (redraws under --unique, --novel or constraints) goes on with
its next attempts as soon as its first ones end. A request under exact constraints draws in
rounds of the adaptive sampler, in this thread: the oldest runs one round between two steps of
the batch, and the others wait for it to finish, so that each starts from the tree the one before
it gave back (chargen.sampling.tree.WarmTrees) and the batch's rows are never held for longer
than a round.

A row's randomness and settings are its own (counter-based random numbers), so a request gets
the samples `Model.samples` gives for the same seed, whatever it is batched with (log-
probabilities to float32 rounding). Torch-free and server-free: `chargen serve` drives it from
its event loop; tests drive it alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from ..config import ServeConfig
from ..errors import SamplingError
from ..tokenizer import Vocab
from .drawing import Drawing, Sample
from .engine import RowEngine, Stepper
from .parallel import ProcessEngine

if TYPE_CHECKING:
    import asyncio  # (22 ms to import: a server has it already)



@dataclass
class BatchStats:
    """What the worker did: network steps, rows advanced over them, rows and requests served."""

    steps: int = 0
    row_steps: int = 0  # rows advanced, summed over steps: row_steps / steps is the mean batch
    rows: int = 0
    requests: int = 0
    busy_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "row_steps": self.row_steps,
                "mean_batch": round(self.row_steps / self.steps, 1) if self.steps else 0.0,
                "rows": self.rows, "requests": self.requests, "busy_seconds": round(self.busy_seconds, 3)}


class _Request:
    """One caller's drawings, run in turn; its samples; the future that hands them back."""

    def __init__(self, drawings: Iterator[Drawing], ended: list, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.drawings = drawings
        self.current: Optional[Drawing] = None
        self.samples: list[Sample] = []
        self.draws = 0  # rows started for it so far
        self.loop, self.ended = loop, ended
        self.future: "concurrent.futures.Future | asyncio.Future" = \
            loop.create_future() if loop is not None else concurrent.futures.Future()

    def advance(self) -> bool:
        """Move past finished drawings; False, with the samples handed back, once none is left."""
        while self.current is None or self.current.done:
            self.current = next(self.drawings, None)
            if self.current is None:
                self._end(self.samples, None)
                return False
        return True

    def fail(self, exc: BaseException) -> None:
        self._end(None, exc)

    def _end(self, samples: Optional[list[Sample]], exc: Optional[BaseException]) -> None:
        """Hand back its samples or its error: at once to a thread's future; an event loop's,
        with the others that end in this pass of the batcher's loop (Batcher._hand_over)."""
        if self.loop is not None:
            self.ended.append((self.loop, self.future, samples, exc))
        else:
            _settle(self.future, samples, exc)


def _settle(future: "concurrent.futures.Future | asyncio.Future", samples: Optional[list[Sample]],
            exc: Optional[BaseException]) -> None:
    if future.done():  # cancelled: its caller went away
        return
    if exc is None:
        future.set_result(samples)
    else:
        future.set_exception(exc)


def _settle_all(ended: list) -> None:
    """(In an event loop's thread) settle its requests' futures."""
    for future, samples, exc in ended:
        _settle(future, samples, exc)


class Batcher:
    """Runs `Model.drawings(...)` of concurrent callers together on one model's stepper.

        batcher = Batcher(model.stepper, model.vocab)
        samples = batcher.submit(model.drawings(10, "Ma", seed=1)).result()  # == list(model.samples(...))
    """

    def __init__(self, stepper: Stepper, vocab: Vocab, *, window: float = ServeConfig.window,
                 max_rows: int = ServeConfig.max_rows, max_draws: Optional[int] = None, workers: int = 0,
                 name: str = "chargen-batcher"):
        self.stats = BatchStats()
        self.stepper, self.vocab, self.workers = stepper, vocab, workers
        self.window, self.max_rows, self.max_draws = window, max_rows, max_draws
        self.engine = self._new_engine()
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ended: list = []  # (loop, future, samples, error) of the requests ended, for their loops
        # Started by the first request: a server forks every model's worker processes before any
        # batcher thread runs (fork copies one thread; a lock another thread held would stay held).
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def submit(self, drawings: Iterator[Drawing],
               loop: Optional[asyncio.AbstractEventLoop] = None) -> "concurrent.futures.Future | asyncio.Future":
        """Queue a request; its future gives its samples (a list), or raises what drawing raised.
        Called from an event loop's thread with `loop`, the future is that loop's: the requests
        that end together are handed to it in one call (one wake-up of the loop a step, not one a
        request: a server's step ends a few of them)."""
        request = _Request(drawings, self._ended, loop)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(request)
            self._cond.notify()
            if self._thread.ident is None:
                self._thread.start()
        self.engine.wake()  # with worker processes the thread may wait on them, not on the condition
        return request.future

    def close(self, timeout: Optional[float] = None) -> None:
        """Finish the requests already queued, then stop the worker (and its processes)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.engine.wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.engine.close()

    def _new_engine(self) -> "RowEngine | ProcessEngine":
        """The rows' engine: in this thread, or (workers > 0) in worker processes."""
        if self.workers:
            return ProcessEngine(self.stepper, self.vocab, self.workers, self.max_rows)
        return RowEngine(self.stepper, self.vocab)

    def _loop(self) -> None:
        engine = self.engine
        owners: dict[int, _Request] = {}  # engine job -> the request whose rows it is
        queue: deque[_Request] = deque()  # requests waiting for room, oldest first
        adaptive: deque[_Request] = deque()  # requests whose next drawing is exact constrained, oldest first
        while True:
            self._hand_over()
            with self._cond:
                if not engine.busy and not queue and not adaptive:
                    while not self._waiting and not self._closed:
                        self._cond.wait()
                    if not self._waiting:
                        return  # closed, and nothing left to do
                    if self.window > 0:  # gather the requests that arrive together
                        self._cond.wait(self.window)
                queue.extend(self._waiting)
                self._waiting.clear()
            started = time.perf_counter()
            while queue and engine.size < self.max_rows:
                self._admit(queue.popleft(), owners, adaptive)
            if adaptive:  # one round of the oldest such request between two steps: the batch's rows go on
                if not self._admit(adaptive[0], owners, adaptive, head=True):
                    adaptive.popleft()
                if engine.busy and adaptive:
                    engine.wake()  # (a ProcessEngine's step would wait for its workers: the next round is due)
            if engine.busy:
                steps, row_steps = engine.steps, engine.row_steps
                try:
                    waited = engine.waited
                    done = engine.step()
                    started += engine.waited - waited  # waiting for worker processes is not this thread's work
                except Exception as exc:  # never leave a caller waiting: all in the batch get the error
                    for request in owners.values():
                        request.fail(exc)
                    owners.clear()
                    engine.close()
                    engine = self.engine = self._new_engine()
                    continue
                for job, drawn in done:
                    request = owners.pop(job)
                    request.samples.extend(request.current.take(drawn))
                    self._admit(request, owners, adaptive)
                self.stats.steps += engine.steps - steps
                self.stats.row_steps += engine.row_steps - row_steps
            self.stats.busy_seconds += time.perf_counter() - started

    def _hand_over(self) -> None:
        """Give each event loop the requests of its that ended: one call for all of them."""
        if not self._ended:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, *outcome in self._ended:
            by_loop.setdefault(loop, []).append(outcome)
        self._ended.clear()
        for loop, ended in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle_all, ended)

    def _admit(self, request: _Request, owners: dict[int, _Request], adaptive: deque[_Request],
               head: bool = False) -> bool:
        """Start the request's next rows in the engine, or hand back what it has (or its error).
        A drawing under exact constraints queues in `adaptive` instead; the request at its head
        (`head`) runs one round of the adaptive sampler here, between two of the engine's steps,
        so the batch's rows go on, and those queued behind it wait for it to finish, so each takes
        its prompt's warm tree in turn (its samples are those of the command). Returns whether the
        request waits in `adaptive`."""
        if request.future.cancelled():  # its caller went away
            return False
        try:
            turn = head
            while request.advance():
                drawing = request.current
                if not drawing.adaptive:
                    attempts = drawing.next_attempts(max(1, self.max_rows - self.engine.size))
                    self._count_draws(request, len(attempts.indices))
                    owners[self.engine.add(attempts)] = request
                    self.stats.rows += len(attempts.indices)
                    return False
                if not turn:
                    if not head:
                        adaptive.append(request)
                    return True
                issued = drawing.issued
                request.samples.extend(drawing.draw_round())
                self._count_draws(request, drawing.issued - issued)
                self.stats.rows += drawing.issued - issued
                turn = False
            self.stats.requests += 1
        except Exception as exc:  # a ChargenError (a SamplingError, say) goes back to its caller
            request.fail(exc)
            self.stats.requests += 1
        return False

    def _count_draws(self, request: _Request, draws: int) -> None:
        request.draws += draws
        if self.max_draws is not None and request.draws > self.max_draws:
            raise SamplingError(f"this request needs more than {self.max_draws:,} draws, this server's limit "
                                f"({len(request.samples):,} samples found so far); ask for fewer, or loosen the "
                                f"constraints (guided drops none)")
