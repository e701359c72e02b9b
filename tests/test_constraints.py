"""Constrained sampling and the most likely samples, checked against brute-force enumeration.

A tiny random network over "abc" + newline has few enough samples of up to 6 characters that
every one's exact probability can be listed. Then: the exact sampler's frequencies must fit the
model's distribution conditioned on the constraints (a chi-square test the guided sampler, which
renormalises step by step, must fail); the guided sampler must fit its own stated probabilities
(logprob - kept); --top must be the enumeration's best, in order; and for random constraints
every sample satisfies them, and "unsatisfiable" is said exactly when the enumeration is empty.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chargen
from chargen.config import ModelConfig, SampleConfig
from chargen.sampling.constraints import Automaton, Constraints
from chargen.errors import SamplingError, UsageError
from chargen.npmodel import NumpyCharRNN
from chargen.sampling import SampleStats, derive_key, generate, guide_for, log_softmax, prime
from chargen.sampling.drawing import Drawing
from chargen.sampling.tree import TREE_MEMORY, PrefixTree, WarmTrees
from chargen.sampling.search import SEARCH_CACHE, most_likely
from chargen.tokenizer import Vocab

from .conftest import CountingStepper, assert_clean_error, run

VOCAB = Vocab(["\n", "a", "b", "c"])
LIMIT = 6  # characters a sample may have in these tests


@functools.lru_cache(maxsize=1)
def tiny_stepper() -> NumpyCharRNN:
    config = ModelConfig(vocab_size=len(VOCAB), cell="lstm", layers=1, hidden=8, embed=4)
    rng = np.random.default_rng(5)
    weights = {name: rng.normal(0, 0.8, shape).astype(np.float32) for name, shape in config.weight_shapes().items()}
    weights["head.bias"] = np.array([-0.6, 0.3, 0.0, -0.2], np.float32)  # newline ends ~1 in 4 steps
    return NumpyCharRNN(config, weights)


@functools.lru_cache(maxsize=1)
def enumerate_probs() -> dict[str, float]:
    return enumerate_probs_of(tiny_stepper())


def enumerate_probs_of(stepper, start_state=None) -> dict[str, float]:
    """Every line sample of 1..LIMIT characters and its probability under the model (temperature 1)."""
    logits, state = prime(stepper, VOCAB, "", True, start_state)
    frontier = [("", 0.0, logits, state)]
    probs: dict[str, float] = {}
    for n in range(LIMIT + 1):
        nxt = []
        for text, lp, logits, state in frontier:
            lsm = log_softmax(logits[None])[0]
            if text:
                probs[text] = math.exp(lp + lsm[0])
            if n == LIMIT:
                continue
            for i in (1, 2, 3):
                step_logits, step_state = stepper.step(np.array([i]), state)
                nxt.append((text + VOCAB.chars[i], lp + lsm[i], step_logits[0], step_state))
        frontier = nxt
    return probs


@pytest.fixture
def stepper() -> NumpyCharRNN:
    return tiny_stepper()


@pytest.fixture
def exact_probs() -> dict[str, float]:
    return enumerate_probs()


def satisfies(text: str, c: Constraints) -> bool:
    return ((c.min_len is None or len(text) >= c.min_len) and (c.max_len is None or len(text) <= c.max_len)
            and (not c.ends_with or text.endswith(c.ends_with)) and all(s in text for s in c.contains)
            and (c.regex is None or re.fullmatch(c.regex, text) is not None))


def draw_many(stepper, n: int, guided: bool = False, seed: int = 1, batch_size: int = 1024, rejection: bool = False,
              **constraints):
    cfg = SampleConfig(num=n, temperature=1.0, length=LIMIT, guided=guided, rejection=rejection, **constraints)
    stats = SampleStats()
    automaton = Automaton(Constraints.of(cfg), VOCAB)
    samples = list(generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(seed), automaton=automaton,
                            stats=stats, batch_size=batch_size))
    return samples, stats


def chi_square_fits(counts: dict[str, int], expected_p: dict[str, float], alpha_z: float = 3.72) -> tuple[bool, float, float]:
    """Pearson's chi-square goodness of fit, bins with expected count < 5 merged; the critical
    value at the normal quantile alpha_z (3.72: alpha = 1e-4) by Wilson-Hilferty."""
    n = sum(counts.values())
    total = sum(expected_p.values())
    big = {k: v / total * n for k, v in expected_p.items() if v / total * n >= 5}
    rest_expected = n - sum(big.values())
    rest_observed = n - sum(counts.get(k, 0) for k in big)
    stat = sum((counts.get(k, 0) - e) ** 2 / e for k, e in big.items())
    df = len(big) - 1
    if rest_expected >= 5:
        stat += (rest_observed - rest_expected) ** 2 / rest_expected
        df += 1
    else:
        assert rest_observed <= 5 + 3 * math.sqrt(max(rest_expected, 1)), "mass where the model puts none"
    critical = df * (1 - 2 / (9 * df) + alpha_z * math.sqrt(2 / (9 * df))) ** 3
    return stat < critical, stat, critical


CONSTRAINED = dict(max_len=5, ends_with="a", contains=["b"])


def counted(texts) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    return counts


@pytest.mark.parametrize("rejection", [False, True], ids=["adaptive", "rejection"])
def test_exact_samplers_follow_the_conditional_distribution(stepper, exact_probs, rejection):
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    assert 10 < len(target) < 200
    samples, stats = draw_many(stepper, 20_000, rejection=rejection, **CONSTRAINED)
    assert all(satisfies(s.text, c) for s in samples)
    ok, stat, critical = chi_square_fits(counted(s.text for s in samples), target)
    assert ok, (stat, critical)
    p_constraint = sum(target.values())
    if rejection:  # the acceptance rate estimates the constraints' probability under the model
        assert stats.mass is None
        assert abs(stats.satisfied_share - p_constraint) < 4 * math.sqrt(p_constraint * (1 - p_constraint) / stats.draws)
    else:  # the adaptive sampler accepts far more draws, and still estimates it, between certain bounds
        assert stats.draws < 1.5 * 20_000 < 0.1 * 20_000 / p_constraint
        m = stats.mass
        # (float32 logits from batches of other widths differ in their last bits: 1e-6 relative)
        assert m.lower <= p_constraint * (1 + 1e-6) and p_constraint <= m.upper * (1 + 1e-6)
        assert abs(m.estimate - p_constraint) < 0.05 * p_constraint
        assert m.lower <= m.estimate <= m.upper
        assert samples[-1].mass == m and samples[-1].record(True)["p_constraints_upper"] == pytest.approx(m.upper, rel=1e-3)


def fresh_tree_samples(stepper, accept_step: bool, trees: int = 200, per_tree: int = 150, width: int = 16) -> list[str]:
    """Accepted samples of many fresh adaptive samplers, each drawing rounds of `width` attempts:
    their early draws, where the bounds are loosest, dominate."""
    cfg = SampleConfig(temperature=1.0, length=LIMIT, **CONSTRAINED)
    automaton = Automaton(Constraints.of(cfg), VOCAB)
    guide = guide_for(automaton, VOCAB, "", cfg, True)
    logits, state = prime(stepper, VOCAB, "", True)
    texts: list[str] = []
    for k in range(trees):
        tree = PrefixTree(stepper, VOCAB, guide, cfg, derive_key(11, k), logits, state, accept_step=accept_step)
        for start in range(0, per_tree, width):
            texts += [t for t in tree.run(np.arange(start, start + width)).texts if t is not None]
    return texts


def test_the_adaptive_sampler_is_exact_from_its_first_draws_and_not_without_its_acceptance_step(stepper, exact_probs):
    """Many fresh samplers, a few rounds each: the conditional distribution is met from the first
    draws; the same sampler without the "go on with probability N(s)/psi(s)" step is biased, and
    the same test says so."""
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    exact = fresh_tree_samples(stepper, accept_step=True)
    assert all(satisfies(t, c) for t in exact)
    ok, stat, critical = chi_square_fits(counted(exact), target)
    assert ok, (stat, critical)
    biased = fresh_tree_samples(stepper, accept_step=False)
    ok, stat, critical = chi_square_fits(counted(biased), target)
    assert not ok and stat > 2 * critical, (stat, critical)


def test_rounds_are_narrower_for_models_whose_nodes_are_large():
    """A round's new nodes live until it ends, so its width shrinks as a model's nodes grow."""
    from chargen.sampling.tree import MAX_BATCH, MIN_ROUND, ROUND_BYTES, node_bytes, round_width

    assert round_width(node_bytes(53, 384)) == MAX_BATCH  # the bundled names model (2.9 KB a node)
    assert round_width(node_bytes(351, 768)) == MAX_BATCH // 2  # the base model (11.6 KB)
    assert round_width(node_bytes(8000, 4096)) == MIN_ROUND  # a vocabulary of thousands (CJK)
    for size in (100, 2_000, 6_000, 11_558, 40_000, 90_000):
        width = round_width(size)
        assert MIN_ROUND <= width <= MAX_BATCH and (width * size <= ROUND_BYTES or width == MIN_ROUND)
        assert width == MAX_BATCH or 2 * width * size > ROUND_BYTES  # the widest that fits


def assert_a_sound_tree(tree: PrefixTree) -> None:
    """Every live node's N (over its children's bounds) at most its own bound, its parent's child
    pointer at it, and each node's count of children the live ones pointing at it."""
    n = tree.nodes
    live = np.ones(n.top, dtype=bool)
    live[n.free] = False
    nodes = np.flatnonzero(live)
    total = np.cumsum(n.probs[nodes] * n.psi[nodes], axis=-1)[:, -1]
    parent = n.parent[nodes]
    own = np.where(parent < 0, tree.root_psi[np.where(parent < 0, nodes, 0)], n.psi[np.maximum(parent, 0), n.char[nodes]])
    assert (total <= own * (1 + 1e-12)).all(), np.max(total / own)
    inner = nodes[parent >= 0]
    assert (n.child[n.parent[inner], n.char[inner]] == inner + 1).all()
    assert (np.bincount(n.parent[inner], minlength=n.top)[nodes] == n.children[nodes]).all()


def test_the_adaptive_sampler_within_a_tiny_memory_bound_stays_exact(stepper, exact_probs):
    """A cap of 16 nodes: cold leaves are evicted and round-only nodes pass no bound up; once a
    round starts at the cap the tree stops growing (it keeps at most the cap plus one round's
    nodes), and the samples still fit."""
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    cfg = SampleConfig(temperature=1.0, length=LIMIT, **CONSTRAINED)
    guide = guide_for(Automaton(Constraints.of(cfg), VOCAB), VOCAB, "", cfg, True)
    logits, state = prime(stepper, VOCAB, "", True)
    tree = PrefixTree(stepper, VOCAB, guide, cfg, derive_key(5), logits, state, memory=1)
    assert tree.cap == 16
    texts: list[str] = []
    counts = []
    for start in range(0, 300_000, 256):
        full = tree.nodes.count >= tree.cap
        texts += [t for t in tree.run(np.arange(start, start + 256)).texts if t is not None]
        assert not tree.nodes.temp.any()
        assert_a_sound_tree(tree)
        if full:
            assert tree.nodes.count <= counts[-1]
        counts.append(tree.nodes.count)
        if len(texts) >= 15_000:
            break
    assert max(counts) < 200 and counts[-1] >= tree.cap
    ok, stat, critical = chi_square_fits(counted(texts), target)
    assert ok, (stat, critical)


def test_calls_without_a_seed_share_a_warm_tree_and_stay_exact(stepper, exact_probs):
    """Calls with keys of their own, 10 samples each, taking the tree the calls before them gave
    back (chargen.sampling.tree.WarmTrees): together they fit the conditional distribution, and the
    later calls need fewer draws than the first, since the bounds they start from are tighter."""
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    cfg = SampleConfig(num=10, temperature=1.0, length=LIMIT, **CONSTRAINED)
    automaton = Automaton(Constraints.of(cfg), VOCAB)
    warm = WarmTrees()
    texts, draws = [], []
    for call in range(1_500):
        stats = SampleStats()
        texts += [s.text for s in generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(7, call),
                                           automaton=automaton, stats=stats, warm=warm)]
        draws.append(stats.draws)
    assert len(warm) == 1
    tree = next(iter(warm._trees.values()))
    assert tree.draws >= sum(draws) and tree.key == derive_key(7, 1_499)  # one tree, drawn with each call's key
    assert sum(draws[:20]) > 1.3 * sum(draws[-20:])
    ok, stat, critical = chi_square_fits(counted(texts), target)
    assert ok, (stat, critical)


def told_tree_samples(stepper, kept_out: set[str], told: bool, trees: int = 150, per_tree: int = 480,
                      width: int = 32, memory: int = TREE_MEMORY) -> tuple[list[str], int, list]:
    """Fresh adaptive samplers' accepted samples that are not in `kept_out`, how many accepted
    draws were in it, and each tree's ConstraintMass; `told`: each tree is told (tree.Excluded)."""
    cfg = SampleConfig(temperature=1.0, length=LIMIT, **CONSTRAINED)
    guide = guide_for(Automaton(Constraints.of(cfg), VOCAB), VOCAB, "", cfg, True)
    logits, state = prime(stepper, VOCAB, "", True)
    rule = (lambda root, text: text in kept_out) if told else None
    texts, wasted, masses = [], 0, []
    for k in range(trees):
        tree = PrefixTree(stepper, VOCAB, guide, cfg, derive_key(12, k), logits, state, memory=memory)
        for start in range(0, per_tree, width):
            got = [t for t in tree.run(np.arange(start, start + width), excluded=rule).texts if t is not None]
            texts += [t for t in got if t not in kept_out]
            wasted += sum(t in kept_out for t in got)
        masses.append(tree.mass)
    return texts, wasted, masses


def test_a_tree_told_what_is_kept_out_after_the_constraints_stops_drawing_it_and_stays_exact(stepper, exact_probs):
    """The five likeliest samples under the constraints (a third of their mass) kept out, as
    `novel` keeps training lines out: trees told so (tree.Excluded) still fit the conditional
    distribution of the rest, return a kept-out sample at most in the round that finds it, so
    waste a small part of the draws the trees not told waste, and still bound Z, the probability
    of the constraints (the samples kept out included)."""
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    allowed = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    kept_out = set(sorted(allowed, key=allowed.get)[-5:])
    z = sum(allowed.values())
    assert 0.25 < sum(allowed[t] for t in kept_out) / z < 0.5
    target = {t: p for t, p in allowed.items() if t not in kept_out}
    texts, wasted, masses = told_tree_samples(stepper, kept_out, told=True)
    ok, stat, critical = chi_square_fits(counted(texts), target)
    assert ok, (stat, critical)
    _, wasted_untold, _ = told_tree_samples(stepper, kept_out, told=False)
    assert wasted < 0.2 * wasted_untold, (wasted, wasted_untold)
    assert all(m.lower <= z * (1 + 1e-6) and z <= m.upper * (1 + 1e-6) for m in masses)
    assert abs(np.mean([m.estimate for m in masses]) - z) < 0.05 * z
    # Within 16 nodes, where leaves are evicted: a node that rules a sample out is kept (a fresh
    # one would allow it again, under a bound computed without it)
    texts, _, _ = told_tree_samples(stepper, kept_out, told=True, trees=5, per_tree=100_000, width=256, memory=1)
    ok, stat, critical = chi_square_fits(counted(texts), target)
    assert ok, (stat, critical)


def unique_draws(stepper, seed: int, told: bool, monkeypatch, **constraints) -> tuple[int, list[str]]:
    """Draws `generate` takes for every sample of a constraints' small language under `unique`."""
    if not told:
        monkeypatch.setattr(Drawing, "_exclusions", lambda self: (None, []))
    cfg = SampleConfig(num=40, temperature=1.0, length=LIMIT, unique=True, **constraints)
    stats = SampleStats()
    texts = [s.text for s in generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(seed), stats=stats,
                                      automaton=Automaton(Constraints.of(cfg), VOCAB))]
    monkeypatch.undo()
    return stats.draws, texts


def test_unique_tells_the_tree_what_it_drew(stepper, exact_probs, monkeypatch):
    """All 40 samples of at most 4 characters that end in "a" (the rarest: 0.1% of their mass),
    under `unique`: told each sample it drew, the tree draws each at most in the round that finds
    it, so the draws fall to about a third of what rejecting the repeats takes (20 seeds each)."""
    language = {t for t in exact_probs if len(t) <= 4 and t.endswith("a")}
    assert len(language) == 40
    told, untold = [], []
    for seed in range(20):
        draws, texts = unique_draws(stepper, seed, True, monkeypatch, max_len=4, ends_with="a")
        assert set(texts) == language and len(texts) == 40
        told.append(draws)
        untold.append(unique_draws(stepper, seed, False, monkeypatch, max_len=4, ends_with="a")[0])
    assert np.median(told) < 0.6 * np.median(untold), (told, untold)
    stats = SampleStats()  # every sample drawn: the bounds on their probability meet, and the note says so
    cfg = SampleConfig(num=40, temperature=1.0, length=LIMIT, unique=True, max_len=4, ends_with="a")
    list(generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(1), stats=stats,
                  automaton=Automaton(Constraints.of(cfg), VOCAB)))
    z = sum(p for t, p in exact_probs.items() if t in language)
    assert f"the constraints hold {z:.3g} of the model's samples at these settings (certain to 3 digits" in stats.constraints_note()


def test_when_every_sample_the_constraints_allow_is_kept_out_the_drawing_says_so_at_once(stepper, exact_probs):
    """`novel` against training lines that hold every sample the constraints allow: the tree's
    bound reaches 0 and the drawing stops with what is wrong, long before its budget (6,100
    draws for 3 samples) runs out."""
    cfg = SampleConfig(num=3, temperature=1.0, length=LIMIT, max_len=3, ends_with="a", novel=True)
    training = {t for t in exact_probs if len(t) <= 3 and t.endswith("a")}
    stats = SampleStats()
    with pytest.raises(SamplingError, match="0 of 3 novel samples in [0-9,]+ draws: every sample that satisfies the "
                                            "constraints at these settings is a training line; loosen the constraints "
                                            "or drop `?novel`?"):
        list(generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(2), automaton=Automaton(Constraints.of(cfg), VOCAB),
                      training_lines=training, stats=stats))
    assert stats.draws < 2_000


def test_a_warm_tree_gives_back_what_a_call_ruled_out_for_itself(stepper, exact_probs):
    """Calls without a seed share a tree (WarmTrees). Under `unique` a call rules its own samples
    out as it draws them (all 13 of at most 3 characters ending in "a", so the tree's bound at
    its root reaches 0), then gives them back (PrefixTree.end_call): the tree it leaves is sound,
    bounds the constraints' probability again, and the next call gets every sample once more.
    Training lines under `novel` stay ruled out: they hold for every call with the tree's key."""
    language = {t: p for t, p in exact_probs.items() if len(t) <= 3 and t.endswith("a")}
    z = sum(language.values())
    automaton, warm = Automaton(Constraints(max_len=3, ends_with="a"), VOCAB), WarmTrees()
    cfg = SampleConfig(num=13, temperature=1.0, length=LIMIT, max_len=3, ends_with="a", unique=True)
    for call in range(3):
        texts = [s.text for s in generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(3, call),
                                          automaton=automaton, warm=warm)]
        assert sorted(texts) == sorted(language)
        tree = next(iter(warm._trees.values()))
        assert not tree.gone.any() and not tree.for_call and not tree.nodes.pinned.any()
        assert_a_sound_tree(tree)
        # (z summed from other batches of rows than the tree's: float32 rounding apart)
        assert tree.root_psi[0] >= z * (1 - 1e-6) and tree.mass.upper == tree.root_psi[0]
    novel = SampleConfig(num=12, temperature=1.0, length=LIMIT, max_len=3, ends_with="a", unique=True, novel=True)
    texts = [s.text for s in generate(stepper, VOCAB, "", novel, lines=True, key=derive_key(4), automaton=automaton,
                                      warm=warm, training_lines={"ba"})]
    assert sorted(texts) == sorted(set(language) - {"ba"})
    tree = next(t for t in warm._trees.values() if t.gone.any())
    assert tree.gone[0] == pytest.approx(language["ba"], rel=1e-5) and tree.nodes.pinned.sum() == 1
    assert_a_sound_tree(tree)


def test_warm_calls_under_unique_stay_exact(stepper, exact_probs):
    """Calls without a seed, 3 distinct samples each, sharing one tree that each call's repeats
    pass through and are given back from: each call's first sample follows the conditional
    distribution (its later ones are conditioned on differing from the earlier)."""
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    cfg = SampleConfig(num=3, temperature=1.0, length=LIMIT, unique=True, **CONSTRAINED)
    automaton, warm, first = Automaton(Constraints.of(cfg), VOCAB), WarmTrees(), []
    for call in range(3_000):
        texts = [s.text for s in generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(8, call),
                                          automaton=automaton, warm=warm)]
        assert len(set(texts)) == 3
        first.append(texts[0])
    ok, stat, critical = chi_square_fits(counted(first), target)
    assert ok, (stat, critical)
    assert_a_sound_tree(next(iter(warm._trees.values())))


def test_a_blends_warm_tree_gives_back_what_a_call_ruled_out_too(tmp_path):
    """A blend's tree (a LabelTree over a root per label), shared by calls without a seed under
    `unique`: after each call its top bound still covers its labels' (N <= psi one level up) and
    bounds the mixture's probability of the constraints again; three calls of 30 distinct samples
    from a language of 53 each get theirs (kept ruled out, the second call would find too few)."""
    from .test_webexport import random_labelled_model

    model = chargen.load(random_labelled_model(tmp_path / "m.safetensors"))
    options = dict(label="it=0.5,el_GR:first=0.5", unique=True, max_len=2, ends_with="a", temperature=1.5)
    for call in range(3):
        stats = SampleStats()
        texts = [s.text for s in model.samples(30, stats=stats, **options)]
        assert len(set(texts)) == 30
        tree = next(iter(model._warm_trees._trees.values()))
        mixed = float(np.cumsum(tree.weights * tree.tree.root_psi)[-1])
        assert mixed <= tree.psi * (1 + 1e-12) and not tree.tree.gone.any() and not tree.tree.for_call
        assert_a_sound_tree(tree.tree)
        assert tree.mass.upper == tree.psi and tree.mass.lower <= tree.psi


def test_a_seed_gets_a_fresh_tree_and_calls_without_keep_theirs(trained_names):
    model = chargen.load(trained_names)
    options = dict(ends_with="a", max_len=6)
    seeded = [s.text for s in model.samples(20, seed=4, **options)]
    assert len(model._warm_trees) == 0  # a seed's tree is not kept
    first, second = SampleStats(), SampleStats()
    list(model.samples(20, stats=first, **options))
    list(model.samples(20, stats=second, **options))
    list(model.samples(5, stats=SampleStats(), contains=["n"]))
    assert len(model._warm_trees) == 2  # one per set of constraints
    tree = model._warm_trees.take(next(iter(model._warm_trees._trees)), lambda: None)
    assert tree.draws >= first.draws + second.draws
    assert [s.text for s in model.samples(20, seed=4, **options)] == seeded  # the history changes no seed's samples


def test_warm_trees_keep_the_most_recent_within_their_memory():
    class Tree:
        def __init__(self, memory):
            self.memory = memory

    warm = WarmTrees(memory=100)
    for k in range(4):
        warm.give_back(k, Tree(40))
    assert list(warm._trees) == [2, 3]  # 80 bytes kept: the two given back last
    again = warm.take(2, lambda: None)
    assert again is not None and list(warm._trees) == [3]  # taken out while in use
    assert warm.take(2, lambda: "new") == "new"
    warm.give_back(2, again)
    warm.give_back(9, Tree(500))  # larger than the whole bound: not kept
    assert list(warm._trees) == [3, 2]


def test_guided_fails_the_conditional_distribution_and_fits_its_own(stepper, exact_probs):
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    target = {t: p for t, p in exact_probs.items() if satisfies(t, c)}
    # The same test rejects the step-by-step renormalised (guided) sampler: it has power.
    guided, guided_stats = draw_many(stepper, 20_000, guided=True, **CONSTRAINED)
    assert guided_stats.draws == 20_000 and all(satisfies(s.text, c) for s in guided)
    g_counts: dict[str, int] = {}
    for s in guided:
        g_counts[s.text] = g_counts.get(s.text, 0) + 1
    ok, stat, critical = chi_square_fits(g_counts, target)
    assert not ok and stat > 3 * critical, (stat, critical)
    # ...while it fits the distribution it states: exp(logprob - kept) per sample.
    stated = {s.text: math.exp(s.logprob_guided) for s in guided}
    assert abs(sum(stated.values()) - 1) < 0.05  # nearly every sample of the language was drawn
    ok, stat, critical = chi_square_fits(g_counts, stated)
    assert ok, (stat, critical)


def test_logprobs_and_kept_are_the_models(stepper, exact_probs):
    samples, _ = draw_many(stepper, 200, **CONSTRAINED)
    for s in samples:
        assert s.logprob == pytest.approx(math.log(exact_probs[s.text]), abs=1e-4)
        assert s.kept <= 0 and s.n_chars == len(s.text) + 1


def test_same_seed_same_samples_whatever_the_batch_size(stepper):
    """Rejection: the same samples at any width, the unconstrained ones that satisfy the
    constraints. Adaptive: the same samples at the same width (its bounds depend on the rounds)."""
    a, _ = draw_many(stepper, 300, seed=9, rejection=True, **CONSTRAINED)
    b, _ = draw_many(stepper, 300, seed=9, batch_size=17, rejection=True, **CONSTRAINED)
    assert [s.text for s in a] == [s.text for s in b]
    adaptive = [[s.text for s in draw_many(stepper, 300, seed=9, batch_size=w, **CONSTRAINED)[0]] for w in (64, 64, 17)]
    assert adaptive[0] == adaptive[1] != adaptive[2]
    # Exact sampling keeps, in order, the unconstrained draws that satisfy the constraints.
    cfg = SampleConfig(num=3000, temperature=1.0, length=LIMIT)
    plain = [s.text for s in generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(9))]
    c = Constraints(max_len=5, ends_with="a", contains=("b",))
    kept = [t for t in plain if satisfies(t, c)]
    assert [s.text for s in a][: len(kept)] == kept[:300]


def test_top_is_the_enumerations_best_in_order(stepper, exact_probs):
    for constraints in ({}, CONSTRAINED, dict(regex="(ab|c)+", min_len=3)):
        c = Constraints(**{k: tuple(v) if k == "contains" else v for k, v in constraints.items()})
        best = sorted(((p, t) for t, p in exact_probs.items() if satisfies(t, c)), reverse=True)[:15]
        automaton = Automaton(c, VOCAB).bounded(LIMIT)
        found = list(most_likely(stepper, VOCAB, "", 15, automaton, batch=4))
        assert [s.text for s in found] == [t for _, t in best]
        np.testing.assert_allclose([s.logprob for s in found], [math.log(p) for p, _ in best], atol=1e-5)


def test_a_search_whose_states_do_not_fit_computes_them_again_and_finds_the_same(stepper, exact_probs):
    """The states are a ring of `cache` bytes. With 1 byte none is kept but the root's, so every
    prefix's states are computed again from the root's; with room for 10 (the tiny model's states
    are 64 bytes) blocks of up to 4 are written over one another as the ring turns: the same best,
    in order, at the cost of more network steps."""
    row = 64
    assert stepper.to_rows(stepper.init_state(1)).nbytes == row
    for constraints in ({}, CONSTRAINED):
        c = Constraints(**{k: tuple(v) if k == "contains" else v for k, v in constraints.items()})
        best = sorted(((p, t) for t, p in exact_probs.items() if satisfies(t, c)), reverse=True)[:15]
        steps = {}
        for cache in (1, 10 * row, 13 * row, SEARCH_CACHE):
            counting = CountingStepper(stepper)
            found = list(most_likely(counting, VOCAB, "", 15, Automaton(c, VOCAB).bounded(LIMIT), batch=4, cache=cache))
            assert [s.text for s in found] == [t for _, t in best]
            np.testing.assert_allclose([s.logprob for s in found], [math.log(p) for p, _ in best], atol=1e-5)
            steps[cache] = sum(counting.widths)
        assert steps[1] > steps[10 * row] > 1.2 * steps[SEARCH_CACHE], steps  # it did compute states again


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 40), chunk=st.integers(1, 12), sizes=st.lists(st.integers(1, 12), max_size=60))
def test_the_search_rings_blocks_read_back_as_written_until_written_over(capacity, chunk, sizes):
    """The search's ring of states (chunks, blocks that never straddle two, the oldest written over
    first): every block still alive reads back what was written; the newest is alive if it fits a
    chunk; the live rows never pass the capacity; a block is gone only once the ring has moved
    past it (at most `capacity` rows written after it, or it did not fit)."""
    from chargen.sampling.search import _Ring

    ring = _Ring(capacity, chunk)
    written = []
    for i, n in enumerate(sizes):
        rows = np.full((n, 3), float(i), dtype=np.float32)
        rows[:, 1] = np.arange(n)
        assert ring.keep(rows) == i
        written.append(rows)
        alive = [b for b in range(i + 1) if ring.alive(b)]
        assert sum(sizes[b] for b in alive) <= ring.capacity
        assert ring.alive(i) == (n <= min(chunk, capacity))
        for b in alive:
            np.testing.assert_array_equal(ring.read(b, 0), written[b])
            np.testing.assert_array_equal(ring.read(b, sizes[b] - 1, np.array([0])), written[b][-1:])
        # Gone only when what came after it fills the ring up to it: a block of n rows is still
        # alive while at most capacity - n - (chunk - 1) rows were written after it.
        fits = min(chunk, capacity)
        for b in range(i + 1):
            after = sum(sizes[b + 1: i + 1]) + (fits - 1) * (i - b)  # rows written or skipped since
            if sizes[b] <= fits and after + sizes[b] < ring.capacity:
                assert ring.alive(b), (b, i)


def test_a_search_past_its_memory_says_so():
    """The prefixes' own data is bounded: past it, one clear error, after the samples found."""
    automaton = Automaton(Constraints(), VOCAB).bounded(LIMIT)
    found = []
    with pytest.raises(SamplingError, match=r"stopped after \d+ expansions with \d+ found .*ask for fewer"):
        for s in most_likely(tiny_stepper(), VOCAB, "", 500, automaton, memory=20_000):
            found.append(s.text)
    best = sorted(enumerate_probs().items(), key=lambda kv: -kv[1])
    assert 0 < len(found) < 500 and found == [t for t, _ in best[: len(found)]]  # those found are exact


def test_the_search_expands_batch_prefixes_per_step_and_finds_the_same(stepper):
    """`batch` bounds the prefixes run through the network together; the answer does not depend on it."""
    automaton = Automaton(Constraints(**{k: tuple(v) if k == "contains" else v for k, v in CONSTRAINED.items()}),
                          VOCAB).bounded(LIMIT)
    results = {}
    for batch in (1, 4, 64):
        counting = CountingStepper(stepper)
        results[batch] = [(s.text, s.logprob) for s in most_likely(counting, VOCAB, "", 15, automaton, batch=batch)]
        assert max(counting.widths) <= batch, (batch, max(counting.widths))
        if batch == 4:
            assert max(counting.widths) == 4  # it did batch
    # The same samples in the same order; their logprobs to float32 rounding (a CPU's BLAS may sum a
    # row of a wider batch in another order).
    for other in (4, 64):
        assert [t for t, _ in results[other]] == [t for t, _ in results[1]]
        np.testing.assert_allclose([lp for _, lp in results[other]], [lp for _, lp in results[1]], rtol=1e-6)


def test_samples_held_for_a_step_go_out_in_order_at_any_batch(stepper, exact_probs):
    """A complete sample reaching the front while prefixes are pending is held aside while the step
    fills (search.py's docstring): the best 400 of the tiny model's 1,093 samples (many of them end
    and tie near one another), held at every batch width, are the enumeration's, in order."""
    best = sorted(((p, t) for t, p in exact_probs.items()), reverse=True)[:400]
    automaton = Automaton(Constraints(), VOCAB).bounded(LIMIT)
    for batch in (1, 3, 16, 256):
        found = list(most_likely(stepper, VOCAB, "", 400, automaton, batch=batch))
        assert [s.text for s in found] == [t for _, t in best], batch
        np.testing.assert_allclose([s.logprob for s in found], [math.log(p) for p, _ in best], atol=1e-5)


def test_top_lists_the_whole_language_when_it_is_small(stepper, exact_probs):
    c = Constraints(max_len=3, ends_with="ca")
    automaton = Automaton(c, VOCAB).bounded(LIMIT)
    found = [s.text for s in most_likely(stepper, VOCAB, "", 100, automaton)]
    assert sorted(found) == ["aca", "bca", "ca", "cca"]
    assert automaton.count(automaton.start("", VOCAB), 0) == 4


PATTERNS = [None, "a+b*c?", "(ab|ba)+c*", "[^c]*c[^c]*", "a.*a", "(?:a|b){2,4}", ".*(bb|cc)"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(min_len=st.one_of(st.none(), st.integers(0, 5)), max_len=st.one_of(st.none(), st.integers(1, 6)),
       ends_with=st.one_of(st.none(), st.text("abc", min_size=1, max_size=2)),
       contains=st.lists(st.text("abc", min_size=1, max_size=2), max_size=2), regex=st.sampled_from(PATTERNS),
       prompt=st.sampled_from(["", "a", "bc"]))
def test_random_constraints_are_always_met(min_len, max_len, ends_with, contains, regex, prompt):
    stepper, exact_probs = tiny_stepper(), enumerate_probs()
    c = Constraints(min_len=min_len, max_len=max_len, ends_with=ends_with, contains=tuple(contains), regex=regex)
    language = [t for t in exact_probs if t.startswith(prompt) and satisfies(t, c)]
    cfg = SampleConfig(num=20, temperature=1.0, length=LIMIT - len(prompt), min_len=min_len, max_len=max_len,
                       ends_with=ends_with, contains=list(contains), regex=regex)
    if min_len is not None and max_len is not None and min_len > max_len:
        with pytest.raises(UsageError, match="above"):
            cfg.validate()
        return
    automaton = Automaton(c, VOCAB)
    if not language:
        with pytest.raises(UsageError, match="no sample|longer than"):
            automaton.bounded(LIMIT).start(prompt, VOCAB)
        return
    # Exact sampling makes a bounded number of draws: a language this rare under the model
    # (given the prompt) must end in a SamplingError that points to --guided; a common one must not.
    rate = sum(exact_probs[t] for t in language) / sum(p for t, p in exact_probs.items() if t.startswith(prompt))
    try:
        exact = list(generate(stepper, VOCAB, prompt, cfg, lines=True, key=derive_key(3), automaton=automaton))
        assert rate > 2e-4 and all(s.text in language for s in exact)
    except SamplingError as exc:
        assert rate < 5e-3 and "pass `guided`" in exc.message
    cfg.guided = True
    guided = list(generate(stepper, VOCAB, prompt, cfg, lines=True, key=derive_key(3), automaton=automaton))
    assert len(guided) == 20 and all(s.text in language for s in guided), [s.text for s in guided]
    top = [s.text for s in most_likely(stepper, VOCAB, prompt, 3, automaton.bounded(LIMIT))]
    assert top == sorted(language, key=lambda t: -exact_probs[t])[:3]


def test_bad_constraints_fail_before_sampling(trained_names):
    model = chargen.load(trained_names)
    cases = [
        (dict(min_len=9, max_len=4), "above"),
        (dict(ends_with="#"), "'#'"),
        (dict(contains=["\u00e9"]), "not in the model's vocabulary"),
        (dict(regex="(ab"), "not a valid regular expression"),
        (dict(regex=r"a\b"), "cannot compile"),
        (dict(regex="[0-9]+"), "no sample"),
        (dict(max_len=2, contains=["Kal"]), "no sample"),
        (dict(lines=False, ends_with="a"), "drop lines=False"),
        (dict(n=50, unique=True, max_len=1), "distinct samples"),
        (dict(guided=True, rejection=True, ends_with="a"), "choose one"),
        (dict(regex=".*a.{20}"), "automaton states"),  # 2**21 states: refused at 20,000, not after hours
        (dict(regex="a{1000000}"), "automaton states"),
        (dict(regex="(" * 5000 + "a" + ")" * 5000), "nests its groups too deeply"),  # RecursionError in re
        (dict(regex="(?:a|" * 300 + "b" + ")" * 300), "nests its groups too deeply"),  # in interegular
        (dict(regex="a{99999999999}"), "not a valid regular expression"),  # OverflowError in re
        (dict(contains=["ab" * 5000]), "no sample"),  # built in a blink (interegular's .*text.*: minutes)
        (dict(ends_with="a" * 30000), "automaton states"),
    ]
    for options, message in cases:
        options = {"n": 1, **options}
        with pytest.raises(UsageError, match=re.escape(message)):
            model.samples(seed=1, **options)
    assert all(s.endswith("a") and len(s) <= 8 for s in model.sample(n=30, seed=2, max_len=8, ends_with="a"))
    assert [s.text for s in model.top(5, ends_with="a")] == [s.text for s in model.top(5, ends_with="a")]


def test_the_estimate_of_the_constraints_probability_stays_within_its_certain_bounds():
    from chargen.sampling.tree import ConstraintMass

    assert ConstraintMass.of(0.5, 100, 0.001, 0.2).estimate == 0.005  # the mean, when within
    assert ConstraintMass.of(1.5e-5, 133, 1.89e-8, 1.9e-8).estimate == 1.9e-8  # 1.1e-7 by chance: above
    assert ConstraintMass.of(0.0, 50, 0.01, 0.3).estimate == 0.01  # no draw kept, yet samples were found
    assert ConstraintMass.of(0.0, 0, 0.0, 0.7).estimate == 0.7  # no draw yet: the root's bound


def _shortfall_bound(stepper, seed: int, rejection: bool, **constraints) -> float | None:
    """The bound a failed drawing's error states ("less than X of the model's samples"); None when
    one sample was found."""
    try:
        draw_many(stepper, 1, seed=seed, rejection=rejection, **constraints)
    except SamplingError as exc:
        found = re.search(r"hold less than ([0-9.e-]+) of the model's samples at these settings \(95% confidence\)",
                          exc.message)
        assert found, exc.message
        return float(found.group(1))
    return None


def test_a_drawing_that_finds_none_bounds_how_rare_its_constraints_are(stepper, exact_probs):
    # contains "bbbb" within the tests' 6 characters: P = 0.00103 under the tiny model (a draw
    # that runs past 6 characters is not kept). One sample asked: 2,100 draws, each kept with
    # probability at least P, so none is kept in about 11% of seeds with plain rejection,
    # (1 - P)^2100 = 0.115. The stated bound, 3 / draws = 0.00143
    # by the rule of three, is then above P, as it must be for all but 5% of such failures in
    # general; a bound of 1 or 2 / draws (0.00048, 0.00095) would be below it in every one.
    z = sum(p for t, p in exact_probs.items() if "bbbb" in t)
    assert 0.0009 < z < 0.0012
    bounds = [_shortfall_bound(stepper, seed, True, contains=["bbbb"]) for seed in range(200)]
    failed = [b for b in bounds if b is not None]
    assert 8 <= len(failed) <= 45, len(failed)  # ~23 expected
    assert all(b == float(f"{3 / 2100:.2g}") and b > z for b in failed), failed
    # The adaptive sampler finds these (its bounds tighten, and this tree is small); from the
    # bundled names model, a text no name holds it does not, and states the rule of three's bound
    # (or its own psi(root), where that is lower).
    with pytest.raises(SamplingError, match=r"0 of 3 samples in 6,100 draws: the constraints hold less than "
                                            r"(0\.00049|[0-9.]+e-[0-9]+) of the model's samples at these settings") as info:
        list(chargen.load().samples(3, seed=1, contains=["zzq"]))
    assert float(re.search(r"less than ([0-9.e-]+)", info.value.message).group(1)) <= 0.00049


def test_a_drawing_that_cannot_succeed_says_so(stepper):
    cfg = SampleConfig(num=2, temperature=1.0, top_k=1, length=LIMIT, ends_with="ab")
    with pytest.raises(SamplingError, match="rule out every sample the model can draw at these settings") as info:
        list(generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(1), automaton=Automaton(Constraints.of(cfg), VOCAB)))
    assert "pass `guided`" in info.value.message


@pytest.mark.parametrize("regex", [None, "(ab)*c?", "((ab){3})*", "(a{2})*(b{3})*", "[A-Z][a-z]*(el|ia)", "Anna|Maria"])
def test_feasibility_from_the_rows_that_differ_is_the_whole_table(regex):
    """Automaton.feasible holds the rows that differ (a --length of 10**9 or 10**12 was minutes and
    gigabytes, or an allocation of a terabyte); every entry is the full table's, built row by row as
    it was, at lengths with cycles below min_len and fixed points above. And count, now counted
    from the short lengths up and stopped at `enough`, is the table's count (or at least `enough`)."""
    vocab = chargen.load().vocab
    rng = np.random.default_rng(0)
    for _ in range(40):
        min_len, max_len = int(rng.choice([0, 1, 2, 5, 9, 30])), [None, 3, 8, 40][rng.integers(4)]
        if max_len is not None and min_len > max_len:
            continue
        ends = [None, "a", "ab"][rng.integers(3)]
        a = Automaton(Constraints(min_len=min_len, max_len=max_len, ends_with=ends, regex=regex), vocab,
                      int(rng.choice([1, 2, 5, 20, 60])))
        table = np.zeros((a.max_len + 2, a.n_states), dtype=bool)
        for n in range(a.max_len, -1, -1):
            table[n] = (a.accepting & (n >= a.min_len)) | (a._live & table[n + 1][a._target]).any(axis=1)
        n, s = np.arange(a.max_len + 2)[:, None], np.arange(a.n_states)[None, :]
        assert (a.feasible[n, s] == table).all(), (min_len, max_len, ends, a.max_len)
        for start in range(a.n_states):
            for n0 in range(0, a.max_len + 1, max(1, a.max_len // 4)):
                ways = np.zeros(a.n_states)  # the table's count: completions of each state, from max_len down
                for m in range(a.max_len, n0 - 1, -1):
                    ends_here = (a.accepting & (m >= a.min_len)).astype(float)
                    ways = ends_here + (np.where(a._live, ways[a._target], 0.0).sum(axis=1) if m < a.max_len else 0)
                assert a.count(start, n0) == pytest.approx(ways[start], rel=1e-12)  # (floats past 2**53)
                for enough in (1, 5, 100):
                    got = a.count(start, n0, enough=enough)
                    assert got == pytest.approx(ways[start], rel=1e-12) or (got >= enough and ways[start] >= enough)
    a = Automaton(Constraints(min_len=7, regex="(ab)*c"), vocab, 10**12)  # was a table of 10**12 rows
    start = a.start("", vocab)
    after_b = a.trans[start, vocab.index["b"]]
    assert len(a.feasible.table) < 10 and a.feasible[10**12 - 1, start] and not a.feasible[10**12, start]
    assert after_b < 0 or not a.feasible[1, after_b]  # (ab)*c: no sample starts with b


def test_an_automaton_keeps_the_latest_length_caps_only():
    """A server's prompts of every length each bound the automaton anew: it keeps the latest
    BOUNDED_KEPT caps' tables (they piled up, one for each length), and one asked again is the same."""
    from chargen.sampling.constraints import BOUNDED_KEPT

    vocab = chargen.load().vocab
    a = Automaton(Constraints(regex="[A-Z][a-z]*(el|ia)"), vocab, 200)
    first = a.bounded(10)
    assert a.bounded(10) is first  # kept
    for limit in range(11, 11 + 3 * BOUNDED_KEPT):
        a.bounded(limit)
    assert len(a._bounded) == BOUNDED_KEPT and 10 not in a._bounded
    again = a.bounded(10)
    n, s = np.arange(12)[:, None], np.arange(a.n_states)[None, :]
    assert again is not first and (again.feasible[n, s] == first.feasible[n, s]).all()


def test_a_length_of_a_trillion_draws_what_the_default_length_draws():
    """Constraints, unique and top under --length 10**12: the same samples as at the default length
    (no sample comes near either), where the feasibility table alone wanted a terabyte."""
    model = chargen.load()
    for options in (dict(ends_with="a"), dict(regex="[A-Z][a-z]*(el|ia)"), dict(contains="th", min_len=6),
                    dict(ends_with="a", unique=True), dict(max_len=8, rejection=True)):
        assert model.sample(20, seed=1, length=10**12, **options) == model.sample(20, seed=1, **options), options
    assert [s.text for s in model.top(5, length=10**12, ends_with="a")] == [s.text for s in model.top(5, ends_with="a")]
    with pytest.raises(UsageError, match="only 2 distinct samples satisfy the constraints"):
        model.sample(5, length=10**12, regex="Anna|Maria", unique=True)  # counted up to the longest, not to 10**12
    with pytest.raises(chargen.ChargenError, match=re.escape("length must be between 1 and 1,000,000,000,000")):
        model.sample(1, length=10**30)  # (an OverflowError in the row engine)


def test_a_text_to_contain_or_end_with_is_the_automaton_interegular_builds_for_it():
    """_kmp against `.*text.*` and `.*text` compiled by interegular: the same strings accepted, every
    string over three letters up to 7 long."""
    from itertools import product

    from chargen.sampling.constraints import _component, _kmp

    chars = list("abc")
    vocab = Vocab(["\n", *chars])
    for text in ["a", "ab", "aa", "aba", "abab", "abcab", "aab", "bba", "cc"]:
        for absorb in (True, False):
            ours = _kmp(text, chars, absorb)
            theirs = _component("x", ".*" + re.escape(text) + (".*" if absorb else ""), vocab, chars)
            for length in range(8):
                for word in product(range(3), repeat=length):
                    accepted = []
                    for table, accepting, state in (ours, theirs):
                        for j in word:
                            state = table[state, j] if state >= 0 else state
                        accepted.append(bool(state >= 0 and accepting[state]))
                    assert accepted[0] == accepted[1], (text, absorb, word)


def test_the_bounded_crawl_builds_interegulars_automata_and_stops_at_the_cap():
    """constraints.py swaps interegular's crawl for a hashed, bounded one while it compiles: the same
    automata, state for state, and a pattern past the cap stops within a second."""
    import time

    import interegular.fsm
    from interegular import parse_pattern

    from chargen.sampling.constraints import _bounded_crawl, _TooManyStates

    original = interegular.fsm.crawl
    for pattern in ["[A-Z][a-z]*(el|ia)", "(ab|cd){30}", ".*a.{6}", "(?i)(?!x).*ab", "(a|b)*(?!ab).{2}", "(.{3,7}){4}"]:
        with _bounded_crawl():
            assert interegular.fsm.crawl is not original
            ours = parse_pattern(pattern).to_fsm()
        theirs = parse_pattern(pattern).to_fsm()
        assert (ours.states, ours.initial, ours.finals, ours.map) == (theirs.states, theirs.initial, theirs.finals,
                                                                      theirs.map), pattern
    assert interegular.fsm.crawl is original
    start = time.perf_counter()
    with pytest.raises(_TooManyStates), _bounded_crawl():
        parse_pattern(".*a.{20}").to_fsm()
    assert time.perf_counter() - start < 5 and interegular.fsm.crawl is original


def test_installed_command_constrains_and_ranks(trained_names, tmp_path):
    exclude = tmp_path / "banned.txt"
    top = run(["sample", "-c", str(trained_names), "--top", "8", "--ends-with", "a", "--format", "jsonl"])
    assert top.returncode == 0, top.stderr.decode()
    import json

    records = [json.loads(line) for line in top.stdout.decode().splitlines()]
    assert len(records) == 8 and all(r["text"].endswith("a") for r in records)
    assert [r["logprob"] for r in records] == sorted((r["logprob"] for r in records), reverse=True)
    exclude.write_text("\n".join(r["text"] for r in records[:3]) + "\n", encoding="utf-8")
    after = run(["sample", "-c", str(trained_names), "--top", "5", "--ends-with", "a", "--exclude", str(exclude)])
    assert after.stdout.decode().splitlines() == [r["text"] for r in records[3:8]]
    piped = run(["sample", "-c", str(trained_names), "--top", "5", "--ends-with", "a", "--exclude", "-"],
                input=exclude.read_bytes())  # `-` is stdin
    assert piped.stdout == after.stdout, piped.stderr
    import gzip  # read as score reads its lines: a compressed list as its text, CRLF as LF

    (tmp_path / "banned.txt.gz").write_bytes(gzip.compress(exclude.read_bytes().replace(b"\n", b"\r\n")))
    zipped = run(["sample", "-c", str(trained_names), "--top", "5", "--ends-with", "a", "--exclude",
                  str(tmp_path / "banned.txt.gz")])
    assert zipped.stdout == after.stdout, zipped.stderr
    assert_clean_error(run(["sample", "-c", str(trained_names), "--exclude", str(tmp_path / "none.txt")]),
                       "--exclude: ", "none.txt does not exist")
    assert_clean_error(run(["sample", "-c", str(trained_names), "-p", "-", "--exclude", "-"], input=b"A\n"),
                       "both read stdin")
    drawn = run(["sample", "-c", str(trained_names), "-n", "40", "--seed", "4", "--regex", "[A-Z][a-z]*n",
                 "--min-len", "4", "--format", "jsonl"])
    assert drawn.returncode == 0, drawn.stderr.decode()
    for line in drawn.stdout.decode().splitlines():
        r = json.loads(line)
        assert re.fullmatch("[A-Z][a-z]*n", r["text"]) and len(r["text"]) >= 4
        assert r["kept"] <= 0 and r["logprob_guided"] == pytest.approx(r["logprob"] - r["kept"], abs=2e-4)
    assert_clean_error(run(["sample", "-c", str(trained_names), "--regex", "(a"]), "regular expression")
    assert_clean_error(run(["sample", "-c", str(trained_names), "--top", "3", "--temperature", "0.5"]), "--temperature")
    assert_clean_error(run(["sample", "-c", str(trained_names), "--min-len", "5", "--max-len", "3"]), "above")
