"""Drawing in worker processes (chargen.sampling.parallel): the samples of one process, whatever
the number of workers and however their results interleave."""

import multiprocessing
import os

import numpy as np
import pytest

import chargen
from chargen.config import MIN_PARALLEL
from chargen.errors import SamplingError, UsageError
from chargen.sampling import parallel, run

pytestmark = pytest.mark.skipif(not parallel.can_fork(), reason="worker processes start by fork (Linux only)")


@pytest.mark.parametrize("options", [
    dict(n=400, seed=1),
    dict(n=300, seed=2, unique=True, novel=True, prompt="Ma", top_p=0.9),
    dict(n=200, seed=3, ends_with="a", max_len=7, rejection=True),
    dict(n=150, seed=4, temperature=1.3, top_k=5, prompt=["B", "Ke"]),
])
def test_workers_draw_what_one_process_draws(trained_names, options):
    """Three workers with 8 rows each and chunks of 2 attempts: hundreds of chunks in flight,
    their results arriving out of order, taken in attempt order."""
    model = chargen.load(trained_names)
    one = list(model.samples(**options, workers=1))
    several = list(run(model.stepper, model.vocab, model.drawings(**options, workers=3), batch_size=24))
    assert len(several) == len(one)
    same = [a.text == b.text for a, b in zip(several, one)]
    # A row's matrix product differs in the last float32 bits with the rows beside it, which a
    # worker's timing decides: about once in 100,000 names that moves a draw across a boundary
    # (docs/benchmarks.md). Taken out of order, nearly every sample would differ.
    assert sum(same) >= len(one) - 1
    pairs = [(a, b) for a, b, equal in zip(several, one, same) if equal]
    assert [a.n_chars for a, _ in pairs] == [b.n_chars for _, b in pairs]
    np.testing.assert_allclose([a.logprob for a, _ in pairs], [b.logprob for _, b in pairs], atol=1e-4)


def test_workers_draw_a_blend_of_labels_as_one_process(trained_labels):
    model = chargen.load(trained_labels)
    options = dict(n=300, seed=5, label="abc=0.3,xyz=0.7")
    one = list(model.samples(**options, workers=1))
    several = list(run(model.stepper, model.vocab, model.drawings(**options, workers=2), batch_size=16))
    assert [(s.text, s.label) for s in several] == [(s.text, s.label) for s in one]
    assert {s.label for s in one} == {"abc", "xyz"}


def test_workers_start_from_a_copy_of_the_models_engine(trained_names, monkeypatch):
    """A Model's workers start from its kept engine (forked with its warm prefix cache), not a new one:
    a worker that built its own would fail here. They draw what one process draws."""
    model = chargen.load(trained_names)
    one = model.sample(600, seed=8, workers=1)  # (and the kept engine's cache warm)

    def no_new_engine(*args, **kwargs):
        raise AssertionError("a worker built an engine of its own")

    monkeypatch.setattr(parallel, "RowEngine", no_new_engine)
    several = model.sample(600, seed=8, workers=2)
    assert sum(a == b for a, b in zip(several, one)) >= len(one) - 1  # (float32 rounding: above)


def test_workers_stop_when_the_reader_stops(trained_names):
    """`chargen sample -n 1000000 | head`: the reader stops after a few samples; closing the
    samples' generator stops the workers (none is left running)."""
    model = chargen.load(trained_names)
    samples = run(model.stepper, model.vocab, model.drawings(1_000_000, seed=6, workers=2))
    first = [next(samples).text for _ in range(5)]
    assert len(multiprocessing.active_children()) == 2
    samples.close()
    assert multiprocessing.active_children() == []
    assert first == model.sample(5, seed=6)


class _Failing:
    """A stepper whose fourth network step raises (in the worker that runs it)."""

    fork_safe = True

    def __init__(self, inner):
        self.inner, self.steps = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, ids, state):
        self.steps += 1
        if self.steps > 3:
            raise RuntimeError("boom")
        return self.inner.step(ids, state)


def test_a_worker_that_fails_is_an_error_in_the_caller(trained_names):
    model = chargen.load(trained_names)
    stepper = _Failing(model.stepper)
    drawings = model.drawings(100, seed=7, workers=2)
    with pytest.raises(SamplingError, match="worker failed: RuntimeError: boom"):
        list(run(stepper, model.vocab, drawings, batch_size=8))
    assert multiprocessing.active_children() == []


def test_the_default_is_one_process_for_few_samples_or_a_torch_model(trained_names):
    from chargen.sampling.drawing import workers_for

    model = chargen.load(trained_names)
    assert workers_for(model.stepper, next(model.drawings(10))) == 1
    assert workers_for(model.stepper, next(model.drawings(10, workers=3))) == 3
    expected = parallel.cores() if parallel.available() else 1
    assert workers_for(model.stepper, next(model.drawings(MIN_PARALLEL))) == expected
    torch_model = chargen.load(trained_names, backend="torch")
    assert workers_for(torch_model.stepper, next(torch_model.drawings(MIN_PARALLEL))) == 1
    with pytest.raises(UsageError, match="numpy backend"):
        workers_for(torch_model.stepper, next(torch_model.drawings(10, workers=3)))


def test_workers_end_when_the_command_is_killed(trained_names):
    """kill -9 of `chargen sample`: its workers see their pipe close and end (no orphan keeps a
    core busy). Before each worker closed the other pipes' ends it inherited, they ran on."""
    import os
    import signal
    import subprocess
    import time

    from .conftest import chargen_exe

    p = subprocess.Popen([chargen_exe(), "sample", "-c", str(trained_names), "-n", "10000000", "--workers", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[str] = []
    deadline = time.monotonic() + 30
    while len(children) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            children = f.read().split()
    assert len(children) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{c}") and _running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{c}") and _running(c) for c in children)


def _running(pid: str) -> bool:
    """Alive and not a zombie waiting for its parent to read its status."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_servers_batcher_in_a_worker_process_gives_the_same_samples(trained_names):
    """chargen serve --workers 1: the batch advances in a worker process; every request gets what
    Model.samples gives it (constrained ones run the adaptive sampler in the server's thread)."""
    from chargen.sampling.batching import Batcher

    model = chargen.load(trained_names)
    options = [dict(n=10, seed=1), dict(n=5, seed=2, prompt="Ka", temperature=1.2, top_k=4),
               dict(n=8, seed=3, ends_with="a", max_len=6), dict(n=6, seed=4, unique=True),
               dict(n=4, seed=5, ends_with="n", rejection=True)] * 20
    batcher = Batcher(model.stepper, model.vocab, workers=1)
    try:
        futures = [batcher.submit(model.drawings(**o)) for o in options]
        got = [[s.text for s in f.result(60)] for f in futures]
        assert batcher.stats.steps > 0 and batcher.stats.row_steps >= batcher.stats.steps
    finally:
        batcher.close(10)
    assert got == [model.sample(**o) for o in options]
    assert multiprocessing.active_children() == []


def test_a_failed_worker_process_fails_its_requests_and_the_next_ones_are_served(trained_names):
    from chargen.sampling.batching import Batcher

    model = chargen.load(trained_names)
    batcher = Batcher(_FailingWide(model.stepper), model.vocab, workers=1)
    try:
        with pytest.raises(SamplingError, match="worker failed: RuntimeError: too wide"):
            batcher.submit(model.drawings(20, seed=1)).result(60)
        # The worker process that failed is replaced: a request it can step is served.
        assert [s.text for s in batcher.submit(model.drawings(5, seed=2)).result(60)] == model.sample(5, seed=2)
    finally:
        batcher.close(10)
    assert multiprocessing.active_children() == []


class _FailingWide(_Failing):
    """A stepper that raises on a step of more than 10 rows."""

    def step(self, ids, state):
        if len(ids) > 10:
            raise RuntimeError("too wide")
        return self.inner.step(ids, state)


def test_the_server_advances_its_batches_in_a_worker_process_by_default(trained_names):
    from chargen.config import ServeConfig
    from chargen.serve import engine_processes

    model = chargen.load(trained_names)
    assert engine_processes(ServeConfig(), model.stepper) == (1 if parallel.available() else 0)
    assert engine_processes(ServeConfig(workers=0), model.stepper) == 0
    assert engine_processes(ServeConfig(workers=2), model.stepper) == 2
    on_torch = chargen.load(trained_names, backend="torch").stepper
    assert engine_processes(ServeConfig(), on_torch) == 0
    assert engine_processes(ServeConfig(workers=0), on_torch) == 0
    with pytest.raises(UsageError, match="numpy backend"):  # asked for, not silently dropped
        engine_processes(ServeConfig(workers=2), on_torch)


def test_seeds_drawn_after_a_fork_are_the_childs_own():
    """A server's worker processes are forked from it: their calls without a seed must not draw the
    server's sequence of seeds (two requests would share their random numbers)."""
    from chargen.sampling.randomness import Seeds

    seeds = Seeds()
    first = seeds()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next seed, then out
        os.write(w, str(seeds()).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = int(os.read(r, 100))
    os.close(r)
    assert child != seeds() and child != first


@pytest.mark.parametrize("n", [10, 64, 65, 1000])
def test_jobs_and_results_cross_to_a_worker_unchanged(trained_names, n):
    """A job (Attempts) and its Results pickle for the pipe to a worker: a few attempts as Python
    lists (cheaper for a server's small jobs), many as numpy arrays; either way they come back
    equal, with their dtypes."""
    import pickle

    from chargen.sampling.engine import Results

    model = chargen.load(trained_names)
    job = next(model.drawings(n, seed=3, label=None)).next_attempts(n)
    back = pickle.loads(pickle.dumps(job))
    assert back.indices.dtype == np.int64 and back.indices.tolist() == job.indices.tolist()
    assert type(back.key) is np.uint64 and back.key == job.key and back.cfg == job.cfg
    rng = np.random.default_rng(n)
    done = Results([f"n{i}" if i % 3 else None for i in range(n)], rng.normal(size=n), rng.integers(1, 9, n),
                   rng.normal(size=n))
    got = pickle.loads(pickle.dumps(done))
    assert got.texts == done.texts
    for name in ("logp", "scored", "kept"):
        assert getattr(got, name).dtype == getattr(done, name).dtype
        assert getattr(got, name).tolist() == getattr(done, name).tolist()


def test_scoring_many_lines_under_many_labels_in_worker_processes_gives_one_process_numbers(monkeypatch):
    """label_nlls hands its runs of (line, label) pairs to worker processes where there are many:
    each run is the same computation wherever it runs, so the NLLs are those of one process, bit
    for bit; a worker's error is raised, not lost."""
    from chargen import evaluation

    model = chargen.load("base")
    scorer = model._numpy_scorer()
    lines = [model.vocab.encode(name + "\n").astype(np.int64) for name in
             ("Maria", "Mario", "Giuseppe", "Lucia", "Anna", "Ioannis", "Dimitra", "Pedro", "Juan", "Zoe")]
    starts = model.label_mix(None).start_states(model.checkpoint.start_state)[:40]
    newline = model.vocab.index["\n"]
    calls = []
    forked = parallel.map_forked
    monkeypatch.setattr(parallel, "map_forked", lambda *a: (calls.append(a[2]), forked(*a))[1])
    monkeypatch.setattr(evaluation, "PARALLEL_PAIRS", 1)
    monkeypatch.setattr(parallel, "available", lambda: True)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    several = evaluation.label_nlls(scorer, lines, starts, newline, rows=64)
    assert calls == [2]
    monkeypatch.setattr(parallel, "available", lambda: False)
    # one process's numbers, computed as a worker computes (one BLAS thread: on some CPUs OpenBLAS's
    # product differs in its last bits with its thread count, docs/benchmarks.md)
    [(_, one)] = forked(lambda _: evaluation.label_nlls(scorer, lines, starts, newline, rows=64), [0], 1)
    np.testing.assert_array_equal(several, one)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        list(forked(lambda x: 1 / x, [1, 0, 2], 2))
