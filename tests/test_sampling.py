"""The sampler: determinism, filters, line mode, redraws, and the torch backend agreeing with numpy."""

import numpy as np
import pytest

import chargen
from chargen.errors import SamplingError, UsageError, VocabularyError
from chargen.config import SampleConfig

from .conftest import CountingStepper, make_names
from chargen.sampling import derive_key, inverse_cdf, sampling_probs, uniforms
from chargen.sampling.drawing import Drawing


def test_same_seed_same_output_whatever_the_batch_size(trained_names):
    model = chargen.load(trained_names)
    a = model.sample(n=50, seed=7, unique=True)
    import chargen.sampling as s

    b = [x.text for x in s.generate(model.stepper, model.vocab, "", SampleConfig(num=50, unique=True), lines=True,
                                    key=derive_key(7, 0), seen=set(), batch_size=3,
                                    start_state=model.checkpoint.start_state)]
    assert a == b
    assert model.sample(n=50, seed=8) != a


def test_torch_backend_draws_the_same_samples(trained_names):
    a = chargen.load(trained_names, backend="numpy").samples(n=20, prompt="K", seed=3)
    b = chargen.load(trained_names, backend="torch").samples(n=20, prompt="K", seed=3)
    a, b = list(a), list(b)
    assert [x.text for x in a] == [x.text for x in b]
    np.testing.assert_allclose([x.logprob for x in a], [x.logprob for x in b], atol=1e-3)


def test_both_backends_store_states_in_the_adaptive_samplers_tree(trained_names):
    """The prefix tree keeps each node's state as a row (Stepper.to_rows/from_rows): both
    backends round-trip it and draw the same constrained samples, and the stored states
    continue exactly as the live ones do."""
    options = dict(n=30, seed=5, contains=["a"], min_len=5, ends_with="n")
    a = chargen.load(trained_names, backend="numpy").sample(**options)
    b = chargen.load(trained_names, backend="torch").sample(**options)
    assert a == b and all("a" in x and x.endswith("n") and len(x) >= 5 for x in a)
    for backend in ("numpy", "torch"):
        stepper = chargen.load(trained_names, backend=backend).stepper
        ids = np.array([1, 2, 3])
        logits, state = stepper.step(ids, stepper.init_state(3))
        rows = stepper.to_rows(state)
        assert rows.shape[0] == 3 and rows.dtype == np.float32
        again, _ = stepper.step(ids, stepper.from_rows(rows))
        direct, _ = stepper.step(ids, state)
        np.testing.assert_allclose(again, direct, atol=1e-6)
        np.testing.assert_array_equal(stepper.to_rows(stepper.from_rows(rows)), rows)


def test_line_mode_exact_count_prompt_unique_novel(trained_names):
    model = chargen.load(trained_names)
    assert model.line_oriented
    out = model.sample(n=100, prompt="Ka", seed=1, unique=True, novel=True)
    assert len(out) == 100 and len(set(out)) == 100
    assert all(s.startswith("Ka") and "\n" not in s and s for s in out)
    assert not set(out) & model.training_lines


def test_impossible_requests_fail_clearly(trained_names):
    model = chargen.load(trained_names)
    with pytest.raises(SamplingError, match="unique"):
        model.sample(n=5, temperature=0, unique=True)  # greedy has exactly one answer
    with pytest.raises(VocabularyError, match="'#'"):
        model.sample(n=1, prompt="#")
    with pytest.raises(UsageError):
        model.sample(n=0)
    with pytest.raises(UsageError):
        model.sample(n=1, top_p=0)


def test_length_caps_and_prose_mode(trained_names, trained_prose, tmp_path):
    model = chargen.load(trained_names)
    for s in model.sample(n=20, length=3, seed=2):
        assert len(s) <= 3
    # a model trained line by line (its learned start state) never learnt what follows a line's end:
    # prose from it (lone letters and blank lines past the first newline) is refused
    with pytest.raises(UsageError, match="never what follows a line's end: it draws lines only; drop lines=False"):
        model.sample(n=1, lines=False, length=60, seed=2)
    with pytest.raises(UsageError, match="draws lines only"):
        list(model.stream(prompt="Ma", lines=False, length=30))
    with pytest.raises(UsageError, match="draws lines only"):
        model.check_prompt("Ma", lines=False)
    # a list trained as a stream (--no-line-mode) runs through several names
    (tmp_path / "names.txt").write_text(make_names(300))
    stream = chargen.load(chargen.train([str(tmp_path / "names.txt")], out=tmp_path / "run", start_from="none",
                                        line_mode=False, layers=1, hidden=16, embed=8, batch_size=8, seq_len=16,
                                        max_steps=2, eval_every=2, precision="fp32"))
    assert stream.line_oriented and not stream.checkpoint.model_config.learned_start
    assert "\n" in stream.sample(n=1, lines=False, length=60, seed=2)[0]
    model = chargen.load(trained_prose)
    prose = model.sample(n=1, length=60, seed=2)[0]
    assert len(prose) == 60
    chars = list(model.stream(prompt="th", length=30, seed=2))
    assert "".join(chars) == model.sample(n=1, prompt="th", length=30, seed=2)[0]


def test_the_smallest_temperature_draws_as_greedy_does(trained_names):
    """At a subnormal temperature the logits' quotients overflowed (inf - inf: NaN), and no sample
    was drawn in 200 tries; the probabilities are the greedy choice's."""
    from chargen.sampling import sampling_probs

    logits = np.array([[1.0, 3.0, 2.0], [-5.0, -4.0, -9.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        assert np.array_equal(sampling_probs(logits, 5e-324, None, None), [[0, 1, 0], [0, 1, 0]])
    model = chargen.load(trained_names)
    assert model.sample(n=3, temperature=5e-324, seed=1) == model.sample(n=3, temperature=0)


def test_logprobs_are_real_logprobs(trained_names):
    model = chargen.load(trained_names)
    samples = list(model.samples(n=30, seed=4, temperature=1.0))
    assert all(s.logprob < 0 and s.n_chars == len(s.text) + 1 for s in samples)  # + the ending newline
    # greedy picks the likeliest path, which is at least as likely per character as typical draws
    greedy = list(model.samples(n=1, temperature=0))[0]
    assert greedy.logprob_per_char >= np.median([s.logprob_per_char for s in samples])


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    p = sampling_probs(logits, 1.0, top_k=2, top_p=None)
    np.testing.assert_allclose(p, [[0.625, 0.375, 0, 0]])
    p = sampling_probs(logits, 1.0, top_k=None, top_p=0.7)
    np.testing.assert_allclose(p, [[0.625, 0.375, 0, 0]])
    p = sampling_probs(logits, 1.0, top_k=None, top_p=0.5)
    np.testing.assert_allclose(p, [[1, 0, 0, 0]])
    p = sampling_probs(logits, 1.0, top_k=None, top_p=1.0)
    np.testing.assert_allclose(p, [[0.5, 0.3, 0.15, 0.05]])


def test_draws_follow_the_distribution():
    p = np.tile(np.array([[0.1, 0.6, 0.3]]), (20000, 1))
    ids = inverse_cdf(p, uniforms(derive_key(1), np.arange(20000), 0))
    freq = np.bincount(ids, minlength=3) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.015)
    u = uniforms(derive_key(1), np.arange(1000), 5)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05


def test_the_integer_key_derivation_is_the_vectorised_hash():
    """derive_key hashes Python ints; the per-character hash is numpy's: both are splitmix64 mod 2**64."""
    import random

    from chargen.sampling.randomness import _GOLD, mix, _mix_int

    rng = random.Random(0)
    values = [0, 1, 2**63 - 1, 2**64 - 1] + [rng.getrandbits(64) for _ in range(200)]
    assert [_mix_int(v) for v in values] == mix(np.array(values, dtype=np.uint64)).tolist()
    for seed in values[:20]:
        z = mix(np.array([seed], dtype=np.uint64))
        with np.errstate(over="ignore"):
            z = mix(z ^ mix(np.array([5], dtype=np.uint64) + _GOLD))
        assert derive_key(seed, 5) == z[0]


def test_rows_that_join_a_running_batch_get_what_they_get_alone(trained_names):
    """Continuous batching: batches of other prompts and settings, constrained or not, joining
    the engine at different steps, each draw exactly what they draw alone; among them rows of
    prose 90 characters long and greedy lines that run to 200, for which the engine's text columns
    widen from 16, and narrow again once they end while later batches run on."""
    from chargen.sampling import RowEngine, run_jobs

    model = chargen.load(trained_names)
    options = [dict(n=30, seed=1), dict(n=20, seed=2, prompt="Ka", temperature=1.2, top_k=4),
               dict(n=25, seed=3, ends_with="a", max_len=6), dict(n=15, seed=4, temperature=0, contains="o"),
               dict(n=10, seed=5, guided=True, regex="[A-Z][a-z]*n"), dict(n=12, seed=6, top_p=0.7, prompt="Ma"),
               dict(n=2, seed=7, lines=False, length=90)]

    def drawing(o: dict):  # (prose rows from a names model: built as Drawings, the API refuses them)
        if o.get("lines") is not False:
            return next(model.drawings(**o))
        cfg = SampleConfig(num=o["n"], seed=o["seed"], lines=False, length=o["length"])
        return Drawing(model.stepper, model.vocab, "", cfg, lines=False, key=derive_key(o["seed"], 0),
                       start_state=model.checkpoint.start_state)

    batches = [drawing(o).next_attempts() for o in options]
    batches += [drawing(options[k]).next_attempts() for k in (0, 2)]  # joining late
    alone = [run_jobs(model.stepper, model.vocab, [b])[0] for b in batches]
    engine = RowEngine(model.stepper, model.vocab)
    jobs, done, widths = {}, {}, []
    step = 0
    late = {200: 7, 201: 8}  # (the greedy rows run to their limit of 200 characters)
    while step <= 201 or engine.busy:  # a batch joins after each of the first steps, two more late
        i = step if step < 7 else late.get(step)
        if i is not None:
            jobs[engine.add(batches[i])] = i
        done.update(engine.step())
        widths.append(engine.out.shape[1])
        step += 1
    assert len(done) == len(batches)
    narrowed = [k for k in range(1, len(widths)) if widths[k] < widths[k - 1]]
    assert max(widths) >= 128 and narrowed and narrowed[-1] < len(widths) - 1, widths  # narrowed as rows ran on
    for job, drawn in done.items():
        expected = alone[jobs[job]]
        assert drawn.texts == expected.texts
        np.testing.assert_array_equal(drawn.scored, expected.scored)
        np.testing.assert_allclose(drawn.logp, expected.logp, atol=1e-4)
        np.testing.assert_allclose(drawn.kept, expected.kept, atol=1e-4)
    assert not engine.groups and engine.size == 0  # nothing is left behind


def test_the_batch_stays_full_until_the_end(trained_names):
    """As rows end, the next attempts start in their place, so the engine advances near its full
    width at every step: a batch run dry until its longest row ended averaged 0.66 of it here
    (names end at different lengths), a batch topped up once 1/8 is free about 0.84 (each step
    ends about 1/8 of the rows: names are about 8 characters)."""
    from chargen.sampling import RowEngine
    from chargen.sampling.drawing import _run_full

    model = chargen.load(trained_names)
    width, n = 64, 2000
    engine = RowEngine(model.stepper, model.vocab)
    samples = list(_run_full(engine, next(model.drawings(n, seed=3)), width))
    assert len(samples) == n
    mean = engine.row_steps / engine.steps / width
    assert 0.78 < mean <= 1, mean
    # The same samples as any other width, to float32 rounding: a row's logits differ in their last
    # bits with the rows beside it, which moves a draw that falls within ~1e-7 of a character's
    # boundary (0 of 100,000 names of the bundled model; this toy has had 1 of these 2,000).
    others = model.sample(n, seed=3)
    assert sum(x.text != y for x, y in zip(samples, others)) <= 2


def test_the_network_steps_each_new_prefix_once(trained_names):
    """Rows that reach a prefix drawn before take its logits and state from the engine's cache
    (chargen.sampling.prefixes): the network steps a fraction of the rows, never more rows than
    are advancing, and the samples are those drawn with no cache, or with a cache too small to
    hold them all (which stops growing at its cap)."""
    from chargen.sampling import RowEngine
    from chargen.sampling.drawing import _run_full
    from chargen.sampling.prefixes import node_bytes

    model = chargen.load(trained_names)

    def draw(memory: int, width: int = 256):
        stepper = CountingStepper(model.stepper)
        engine = RowEngine(stepper, model.vocab, prefix_memory=memory)
        samples = [s.text for s in _run_full(engine, next(model.drawings(3000, seed=4)), width)]
        assert sum(stepper.widths) == engine.computed <= engine.row_steps
        return samples, engine

    plain, none = draw(0)
    assert none.computed == none.row_steps  # no cache: every row stepped
    cached, full = draw(32 << 20)
    assert cached == plain
    assert full.computed < 0.4 * full.row_steps, (full.computed, full.row_steps)
    assert 0 < full.cache.count < full.cache.cap
    small_memory = node_bytes(len(model.vocab), full.cache.state_size) * 300  # room for 300 prefixes
    capped, small = draw(small_memory, width=64)
    assert capped == plain
    assert small.cache.count == small.cache.cap == 300
    assert full.computed < small.computed < small.row_steps


def test_long_samples_keep_only_their_first_prefixes(trained_prose):
    """Past PREFIX_DEPTH characters a row's prefixes are not kept (prose shares nothing that far
    in) and steps whose rows are all on nodes of their own skip the lookups: the same text as with
    no cache, a cache of at most the root and PREFIX_DEPTH nodes a row."""
    from chargen.sampling import RowEngine
    from chargen.sampling.drawing import _run_full
    from chargen.sampling.prefixes import PREFIX_DEPTH

    model = chargen.load(trained_prose)

    def draw(memory: int):
        engine = RowEngine(model.stepper, model.vocab, prefix_memory=memory)
        drawing = next(model.drawings(3, seed=6, length=300, prompt="th"))
        return [s.text for s in _run_full(engine, drawing, 8)], engine

    texts, engine = draw(32 << 20)
    assert [len(t) for t in texts] == [302] * 3
    assert texts == draw(0)[0]
    assert PREFIX_DEPTH < 300
    assert 1 + PREFIX_DEPTH <= engine.cache.count <= 1 + 3 * PREFIX_DEPTH  # the root, and each row's first prefixes
    assert engine.computed > 3 * (300 - PREFIX_DEPTH)


def test_a_node_draw_kept_for_one_setting_is_not_used_for_another(trained_names):
    """Under one plain setting each node's draw (its cumulative probabilities and log-normaliser)
    is computed once and kept with the prefix cache: a job with other settings after it, in the
    same engine, draws what it draws in a fresh one, and the first job again what it drew."""
    from chargen.sampling import RowEngine, run_jobs

    model = chargen.load(trained_names)
    jobs = [next(model.drawings(**o)).next_attempts() for o in
            (dict(n=300, seed=1), dict(n=300, seed=2, temperature=1.3, top_k=6), dict(n=300, seed=1, top_p=0.8),
             dict(n=300, seed=1))]
    fresh = [run_jobs(model.stepper, model.vocab, [job])[0] for job in jobs]
    engine = RowEngine(model.stepper, model.vocab)
    for job, alone in zip(jobs, fresh):
        j = engine.add(job)
        done = {}
        while engine.busy:
            done.update(engine.step())
        assert done[j].texts == alone.texts
        np.testing.assert_allclose(done[j].logp, alone.logp, atol=1e-4)  # (float32 rows: last bits)
    assert fresh[0].texts == fresh[3].texts and fresh[0].texts != fresh[1].texts != fresh[2].texts
    assert engine.cache.count > 100


def test_a_models_calls_share_one_warm_engine_and_change_no_sample():
    """A Model keeps its row engine between calls, so a program's repeated small calls step only
    prefixes no call drew before: the same call again steps none. Every call still draws what a
    fresh model draws for its seed, whatever came before; a caller that stops reading leaves the
    engine clean for the next; threads that sample at once each get an engine (one the kept one)."""
    import threading

    model, fresh = chargen.load(), lambda n, **kw: chargen.load().sample(n, **kw)
    first = model.sample(100, seed=1)
    engine = model._engine._engine
    before = engine.computed
    assert model.sample(100, seed=1) == first and engine.computed == before  # every prefix was there
    assert model.sample(30, seed=2, temperature=1.3) == fresh(30, seed=2, temperature=1.3)
    unread = model.samples(6000, seed=3)  # more attempts than the engine's width: some still running
    next(unread)
    assert engine.jobs  # (what the close must cancel)
    unread.close()
    assert model._engine._engine is engine and not engine.jobs and len(engine.rows) == 0
    assert model.sample(10, seed=4) == fresh(10, seed=4)
    results: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, model.sample(300, seed=k))) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == fresh(300, seed=k) for k in range(4))
