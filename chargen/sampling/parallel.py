"""Drawing on every core: worker processes, each with its own row engine, run a drawing's attempts
in chunks, and the parent takes their results in attempt order.

Attempt i's result depends on (key, i) and the model alone (chargen.sampling.randomness), and
`Drawing.take` keeps results in attempt order, so the samples are those one process draws, at
any number of workers (tested), as at any batch width: up to float32 rounding, since a row's
matrix product differs in its last bits with the rows beside it (about one name in 100,000 has
a draw moved across a boundary by it, in one process or several: docs/benchmarks.md). What runs
here: plain and rejection sampling (the adaptive exact sampler's rounds depend on each other
through its tree, and a streamed sample is one row).

    parent                                    worker k (forked: the model is shared, copy-on-write)
    Drawing.next_attempts(chunk) --[tag, Attempts]--> RowEngine: keeps `width` rows full, one
      ...while a worker has room                      network step a character for all of them
    Drawing.take(results), in tag order <--[(tag, Results)...]-- each step, the chunks whose rows all ended

Why processes: numpy releases the GIL inside a ufunc, but a step's many small calls and the
engine's bookkeeping hold it, and the LSTM's elementwise work runs on one core; two processes on
the 2-core AVX2 VM drew 20,000 names in 0.77 s against 1.47 s in one (docs/benchmarks.md). Each
worker first limits numpy's BLAS to one thread: two workers with two BLAS threads each ran at a
quarter of that speed. Workers start by fork (the model and its loaded weights carry over for
free), so this runs where fork is the platform's safe default (Linux); elsewhere one process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from ..errors import SamplingError, UsageError
from ..tokenizer import Vocab
from .engine import Attempts, Results, RowEngine, Stepper

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
# multiprocessing and ctypes are imported where workers start (12 ms: every command would pay it)

CHUNKS = 4  # a message carries 1/CHUNKS of a worker's width of attempts (its engine tops itself up from them)
AHEAD = 2  # a worker holds up to AHEAD x its width of attempts (a chunk counts until its last row ends)
_BLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "MKL_Set_Num_Threads", "bli_thread_set_num_threads")


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def one_blas_thread() -> None:
    """Hold numpy's BLAS to one thread in this process (a worker: two BLAS threads in each of two
    processes on two cores run at a quarter of the speed)."""
    for setter in _blas_thread_setters():
        setter(1)


# A network with fewer matrix weights than this runs a command's numpy steps on one BLAS thread.
# Measured on a 2-core AMD EPYC VM (`python benchmarks/blas_threads.py`; docs/benchmarks.md, "One
# BLAS thread for small networks"): for the bundled names (128k weights) and base (559k) models a
# second thread sampled and scored at most 1.14x faster on an idle machine (and sometimes slower),
# but beside one busy process (a training run, the other end of a pipeline, xargs -P) 1.13-1.81x
# slower, as OpenBLAS's threads wait for each other (1.3-4.4x beside a training run, and once over
# 15x); from 2x256 (859k) up a second thread was 1.15-1.6x faster idle, so those keep BLAS's own.
SMALL_NETWORK = 700_000


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_for_command(matmul_weights: int) -> None:
    """A command that steps a network of `matmul_weights` in numpy (sample, score, eval, export) holds
    BLAS to one thread where the network is small (SMALL_NETWORK), unless the environment sets
    BLAS's threads itself (BLAS_THREAD_VARIABLES); a library caller's process is left as it is."""
    if matmul_weights < SMALL_NETWORK and not any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES):
        one_blas_thread()


def _blas_thread_setters() -> list:
    """The loaded BLAS libraries' "set the number of threads" functions (Linux: from /proc/self/maps)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line and ("blas" in line or "mkl" in line)}
    except OSError:
        return []
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found += [getattr(lib, name) for name in _BLAS_SETTERS if hasattr(lib, name)]
    return found


def forkable(stepper: Stepper) -> bool:
    """Whether a worker process may step this network (its class says so: numpy's twin does; a
    model on torch is never forked)."""
    return getattr(stepper, "fork_safe", False)


def refuse_workers(stepper: Stepper, asked: Optional[int], inline: int) -> None:
    """The sampler's and the server's one error for worker processes asked for (`asked` above
    `inline`, the count that means none: 1 for the sampler, this process; 0 for the server, a
    thread) where the network cannot be forked."""
    if asked is not None and asked > inline and not forkable(stepper):
        raise UsageError(f"`workers` above {inline} needs the numpy backend (a model on torch is not forked)")


def can_fork() -> bool:
    """Whether worker processes can start here: by fork, where it is the platform's safe default."""
    return sys.platform.startswith("linux")


def available() -> bool:
    """Whether workers start by default: more than one core, fork, numpy's BLAS can be held to one
    thread in each, and this process runs one thread (as the command does): fork copies only the
    thread that calls it, and a lock another thread held would stay held in the child, so a
    program with threads of its own (a notebook, a web app) gets workers when it asks for them."""
    return can_fork() and cores() > 1 and threading.active_count() == 1 and bool(_blas_thread_setters())


def _worker(conn: "Connection", inherited: list["Connection"], stepper: Stepper, vocab: Vocab, width: int,
            engine: Optional[RowEngine] = None) -> None:
    """A worker's loop: take chunks of attempts (a message is a list of (tag, Attempts)), keep the
    engine `width` rows full, send back after each step the Results of the chunks whose rows have
    all ended; None stops it, "drop" drops every chunk it holds, and the parent's end of the pipe
    closing (it exited, or was killed) ends it too. `engine`: the parent's (idle), copied by the
    fork with its prefix cache; else a new one."""
    with _worker_process(conn, inherited):
        engine, tags, queued = RowEngine(stepper, vocab) if engine is None else engine, {}, deque()
        while True:
            while not (engine.busy or queued) or conn.poll():
                message = conn.recv()
                if message is None:
                    return
                if message == "drop":
                    for job in list(tags):
                        engine.cancel(job)
                    tags.clear()
                    queued.clear()
                else:
                    queued.extend(message)
            while queued and engine.size < width:
                tag, attempts = queued.popleft()
                tags[engine.add(attempts)] = tag
            done = engine.step()
            if done:  # one message a step: a server's step ends many small jobs
                conn.send(([(tags.pop(job), results) for job, results in done], engine.steps, engine.row_steps))


@contextlib.contextmanager
def _worker_process(conn: "Connection", inherited: list["Connection"]) -> Iterator[None]:
    """A forked worker's life: the parent's other ends of the pipes closed (held here, no EOF would
    come), one BLAS thread; the parent's end closing or Ctrl-C ends it quietly, and any other error
    is sent to the parent ("error", message), which raises it."""
    try:
        for other in inherited:
            other.close()
        one_blas_thread()
        yield
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


def map_forked(fn: Callable[[Any], Any], items: list, n: int) -> Iterator[tuple[int, Any]]:
    """fn(item) for each item in `n` forked processes (item i in process i % n, each with one BLAS
    thread), as (i, result) pairs in the order they come back: work whose parts are independent
    (scoring runs of lines under labels). A worker's error is raised here as a RuntimeError; the
    workers are stopped when the caller stops iterating. Only where `available()`."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    conns: list["Connection"] = []
    procs = []
    try:
        for k in range(n):
            receive, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_map_worker, args=(send, [*conns, receive], fn, items, k, n), daemon=True)
            p.start()
            send.close()
            conns.append(receive)
            procs.append(p)
        left = {conn: len(items[k::n]) for k, conn in enumerate(conns)}
        while any(left.values()):
            for conn in wait([c for c, m in left.items() if m]):
                try:
                    message = conn.recv()
                except EOFError:
                    raise RuntimeError("a worker process ended before its work was done") from None
                if message[0] == "error":
                    raise RuntimeError(message[1])
                left[conn] -= 1
                yield message
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for conn in conns:
            conn.close()


def _map_worker(conn: "Connection", inherited: list["Connection"], fn: Callable[[Any], Any], items: list,
                k: int, n: int) -> None:
    """map_forked's worker k: items k, k + n, ..., each result sent as it is done."""
    with _worker_process(conn, inherited):
        for i in range(k, len(items), n):
            conn.send((i, fn(items[i])))


class Workers:
    """`n` worker processes drawing for this process; close() stops them."""

    def __init__(self, stepper: Stepper, vocab: Vocab, n: int, width: int, engine: Optional[RowEngine] = None):
        if not can_fork():
            raise UsageError(f"`workers` need Linux (worker processes start by fork; this is {sys.platform})")
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.n, self.width, self.chunk, self.conns, self.procs = n, width, max(1, width // CHUNKS), [], []
        self.load = [0] * n  # attempts each worker holds
        self.outbox: list[list] = [[] for _ in range(n)]  # chunks held for each worker until send()
        self.owner: dict[int, int] = {}  # chunk tag -> its worker
        self.steps, self.row_steps = [0] * n, [0] * n  # each worker's engine's, as of its last results
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, [*self.conns, parent], stepper, vocab, width, engine), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self._tags = 0
        self._fds = [conn.fileno() for conn in self.conns]
        self._poll, self._poll_wake = None, None  # (receive's: _poller)

    def least_loaded(self) -> int:
        return min(range(len(self.load)), key=self.load.__getitem__)

    def room(self) -> int:
        """The worker with the most room, if it has room for a chunk; else -1."""
        k = self.least_loaded()
        return k if self.load[k] + self.chunk <= AHEAD * self.width else -1

    def submit(self, k: int, attempts: Attempts, hold: bool = False) -> int:
        """Hand worker k a chunk; its tag. With `hold`, it waits in worker k's outbox for `send()`:
        a server's step starts dozens of small jobs, sent as one message (one system call, and
        their prompt's arrays, shared by them, pickled once)."""
        tag, self._tags = self._tags, self._tags + 1
        self.outbox[k].append((tag, attempts))
        self.load[k] += len(attempts.indices)
        self.owner[tag] = k
        if not hold:
            self.send()
        return tag

    def send(self) -> None:
        """Send every outbox's chunks."""
        for k, chunks in enumerate(self.outbox):
            if chunks:
                self.conns[k].send(chunks)
                self.outbox[k] = []

    def receive(self, wake: Optional[int] = None) -> list[tuple[int, Results]]:
        """Results of chunks that have ended: waits for some, or for a byte on the file
        descriptor `wake` (then perhaps none)."""
        out = []
        for fd, _ in self._poller(wake).poll():
            if fd == wake:
                os.read(wake, 4096)
                continue
            k = self._fds.index(fd)
            ready = self.conns[k]
            try:
                message = ready.recv()
            except EOFError:
                raise SamplingError("a sampling worker process ended unexpectedly") from None
            if message[0] == "error":
                raise SamplingError(f"a sampling worker failed: {message[1]}")
            ended, steps, row_steps = message
            self.steps[k], self.row_steps[k] = steps, row_steps
            for tag, results in ended:
                if self.owner.pop(tag, None) is not None:  # (None: a chunk dropped since)
                    self.load[k] -= len(results.texts)
                    out.append((tag, results))
        return out

    def _poller(self, wake: Optional[int]):
        """A poll object watching the workers' pipes and `wake`, made once (multiprocessing's
        `wait` builds a selector each call: a server's step paid for it)."""
        if self._poll is None or self._poll_wake != wake:
            import select

            self._poll, self._poll_wake = select.poll(), wake
            for fd in [*self._fds, *([wake] if wake is not None else [])]:
                self._poll.register(fd, select.POLLIN)
        return self._poll

    def drop(self) -> None:
        """Forget every chunk handed out (a drawing has what it needs)."""
        for k, conn in enumerate(self.conns):
            self.outbox[k] = []
            conn.send("drop")
        self.owner.clear()
        self.load = [0] * len(self.load)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for p in self.procs:
            p.join(timeout=1)
            if p.is_alive():
                p.terminate()


def run_parallel(workers: Workers, drawing) -> Iterator:
    """One drawing's samples from the workers' results, taken in attempt order (as _run_full
    takes them from one engine), the workers kept full until enough are kept."""
    running: deque[int] = deque()  # chunk tags, in attempt order
    finished: dict[int, Results] = {}
    while not drawing.done:
        while True:
            k = workers.room()
            if running and (k < 0 or drawing.wanted() <= 0):
                break
            # (with none running, past the budget, next_attempts raises: as in _run_full)
            running.append(workers.submit(max(k, 0), drawing.next_attempts(workers.chunk)))
        finished.update(workers.receive())
        while running and running[0] in finished and not drawing.done:
            yield from drawing.take(finished.pop(running.popleft()))
    if running:
        workers.drop()


class ProcessEngine:
    """A RowEngine's face (add, size, busy, step, steps, row_steps, wake, close, waited) on `n`
    worker processes, for a caller that keeps jobs of many requests in flight (`chargen serve`'s
    batcher): the network steps run in the workers, so the caller's process (its event loop, its
    GIL) only hands jobs out and takes results. `step` waits for the next jobs to end, or for
    `wake()` (a new request: its rows should join now), and returns those that ended; `waited`
    sums the seconds spent in it."""

    def __init__(self, stepper: Stepper, vocab: Vocab, n: int, width: int):
        self.workers = Workers(stepper, vocab, n, width)
        self.waited = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._woken = False  # a wake-up is pending: another would only cost a system call

    @property
    def size(self) -> int:
        return sum(self.workers.load)

    @property
    def busy(self) -> bool:
        return bool(self.workers.owner)

    @property
    def steps(self) -> int:
        return sum(self.workers.steps)

    @property
    def row_steps(self) -> int:
        return sum(self.workers.row_steps)

    def add(self, attempts: Attempts) -> int:
        return self.workers.submit(self.workers.least_loaded(), attempts, hold=True)

    def step(self) -> list[tuple[int, Results]]:
        self.workers.send()  # the jobs added since the last step
        started = time.perf_counter()
        results = self.workers.receive(self._wake_r)
        self._woken = False  # (a wake-up sent after receive drained the pipe stays, and wakes the next wait)
        self.waited += time.perf_counter() - started
        return results

    def wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def close(self) -> None:
        self.workers.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
