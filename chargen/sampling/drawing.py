"""Drawing samples: run the prompt through the network once, then one character at a time,
carrying the recurrent state; many samples advance together as rows of one batch
(chargen.sampling.engine), each attempt with its own counter-based random numbers
(chargen.sampling.randomness).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from collections import deque
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..config import MIN_PARALLEL, SampleConfig
from ..errors import SamplingError, UsageError, VocabularyError
from ..tokenizer import Vocab, describe_chars
from .constraints import Automaton, Constraints, guide_for
from .engine import Attempts, Results, RowEngine, Stepper
from .labels import LabelMix, line_key
from .parallel import Workers, cores, forkable, refuse_workers, run_parallel
from .parallel import available as parallel_available
from .tree import FOR_CALL, FOR_GOOD, KEPT, MAX_BATCH, ConstraintMass, Excluded, LabelTree, PrefixTree, WarmTrees

# Rows the engine keeps advancing in plain and rejection sampling (whose samples do not depend on
# it): wider steps share the per-step work; measured, bundled names model, 20,000 names in-process:
# 2,048 beat 1,024 by 5% on an AVX2-only EPYC and by 15% on an AVX-512 Xeon, 4,096 lost on both
# (docs/benchmarks.md). Memory: 2,048 x hidden floats per layer and state tensor.
ENGINE_WIDTH = 2048
CONSTRAINED_TRIES = 2000  # draws per wanted sample under exact constraints: down to ~0.05% acceptance


# --- samples ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    text: str  # prompt + generated text (without the newline that ended a line)
    prompt: str
    logprob: float  # log-probability under the model (temperature 1) of every generated char,
    n_chars: int  # including the newline that ended a line; n_chars counts them
    kept: float = 0.0  # constrained samples: log of the model's mass the constraints allowed, summed over steps
    mass: Optional[ConstraintMass] = None  # drawn by the adaptive exact sampler: what it knew of the constraints' probability
    label: Optional[str] = None  # a labelled model's: the label it was drawn under

    @property
    def logprob_per_char(self) -> float:
        return self.logprob / self.n_chars if self.n_chars else 0.0

    @property
    def logprob_guided(self) -> float:
        """Log-probability under the model renormalised at each step over what the constraints allow."""
        return self.logprob - self.kept

    def record(self, constrained: bool = False) -> dict:
        """The JSON record of `chargen sample --format jsonl` and of `chargen serve`; drawn under
        constraints, also the mass they kept and the log-probability under --guided."""
        out = {"text": self.text, "prompt": self.prompt, "logprob": round(self.logprob, 4),
               "logprob_per_char": round(self.logprob_per_char, 4), "chars": self.n_chars}
        if self.label is not None:
            out["label"] = self.label
        if constrained:
            out.update(kept=round(self.kept, 4), logprob_guided=round(self.logprob_guided, 4))
            if self.mass is not None:
                out.update(self.mass.record())
        return out


@dataclass
class SampleStats:
    """What drawing cost: filled in as samples are drawn (draws = samples tried, accepted = kept)."""

    draws: int = 0
    accepted: int = 0
    rejected_by_constraints: int = 0
    mass: Optional[ConstraintMass] = None  # the adaptive exact sampler's, of the last prompt drawn by it

    @property
    def satisfied(self) -> int:
        return self.draws - self.rejected_by_constraints

    @property
    def satisfied_share(self) -> float:
        """Share of draws that met the constraints: under plain rejection, an estimate of the
        probability the model (at these settings) gives to the constraints."""
        return self.satisfied / self.draws if self.draws else 1.0

    def constraints_note(self, prompts: int = 1) -> Optional[str]:
        """What exact sampling under constraints cost and learnt, for stderr; None if nothing to say."""
        if self.mass is not None:
            m, which = self.mass, " (the last prompt's)" if prompts > 1 else ""
            if f"{m.lower:.3g}" == f"{m.upper:.3g}":  # the bounds meet: the samples drawn hold it all
                held = f"the constraints hold {m.upper:.3g} of the model's samples at these settings{which} (certain to 3 " \
                       f"digits: the samples drawn hold that much)"
            else:
                held = f"the constraints hold about {m.estimate:.3g} of the model's samples at these settings{which}, " \
                       f"certainly between {m.lower:.3g} and {m.upper:.3g}"
            return f"note: {held}; {self.accepted:,} of {self.draws:,} draws kept (adaptive exact sampling)"
        if self.rejected_by_constraints:
            return (f"note: {self.satisfied:,} of {self.draws:,} draws ({self.satisfied_share:.1%}) met the "
                    f"constraints; exact sampling drops the rest (--guided drops none, but is biased)")
        return None


def initial_state(stepper: Stepper, start_state: Optional[list[np.ndarray]]):
    """A batch-of-one state: the model's typical end-of-line state if the checkpoint has one."""
    return stepper.init_state(1) if start_state is None else stepper.state_from_arrays(start_state)


def check_prompt(vocab: Vocab, prompt: str, lines: bool) -> None:
    bad = vocab.unknown_chars(prompt)
    if bad:
        shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."  # (which of several prompts; a long one cut)
        raise VocabularyError(f"the prompt {shown!r} holds {describe_chars(bad)}, not in the model's vocabulary")
    if lines and "\n" in prompt:
        raise UsageError("a prompt in line mode cannot hold a newline")


def prime(stepper: Stepper, vocab: Vocab, prompt: str, lines: bool, start_state: Optional[list[np.ndarray]] = None,
          starts: Optional[list[list[np.ndarray]]] = None):
    """Run "\\n" (start of a line) and the prompt through the network once: (logits (V,), state);
    with `starts` (a blend's start states, one per label), from each: (logits (P, V), state of P rows)."""
    check_prompt(vocab, prompt, lines)
    start = "\n" if "\n" in vocab else (" " if " " in vocab else vocab.chars[0])
    ids = vocab.encode(start + prompt).astype(np.int64)
    if starts is None:
        state = initial_state(stepper, start_state)
    else:
        state = stepper.concat([stepper.state_from_arrays(s) for s in starts])
    logits = None
    for i in ids:  # the prefix runs once, then its state is shared by every sample
        logits, state = stepper.step(np.full(len(starts) if starts else 1, i), state)
    return (logits[0] if starts is None else logits), state


class Drawing:
    """The draws that make one prompt's `cfg.num` samples: which attempts to run next
    (`next_attempts`) and which of their results to keep (`take`).

    Line mode redraws empty samples, repeats (`unique`), training lines (`novel`), lines in
    `exclude` and, under an exact `automaton`, samples that break the constraints; a bounded
    number of draws per wanted sample guards against a model that cannot produce enough.
    `primed` is what `prime` gives for this prompt, if the caller keeps it. Attempt i always
    uses random stream i and results are kept in attempt order, so what is kept
    does not depend on how many attempts run at once, nor on what they run beside. `warm`: where
    the adaptive exact sampler's tree is taken from and given back to between calls (for calls
    without a seed: chargen.sampling.tree.WarmTrees).
    """

    def __init__(self, stepper: Stepper, vocab: Vocab, prompt: str, cfg: SampleConfig, *, lines: bool,
                 key: np.uint64, seen: Optional[set[str]] = None, training_lines: Optional[set[str]] = None,
                 exclude: Optional[set[str]] = None, on_char: Optional[Callable[[str], None]] = None,
                 start_state: Optional[list[np.ndarray]] = None,
                 automaton: Optional[Automaton] = None,
                 stats: Optional[SampleStats] = None, primed: Optional[tuple[np.ndarray, object]] = None,
                 labels: Optional[LabelMix] = None, warm: Optional[WarmTrees] = None):
        self.guide = guide_for(automaton, vocab, prompt, cfg, lines)
        # A labelled model: `labels` the mix to draw from, `start_state` each label's ((labels, layers, H) each).
        self.labels = labels
        if labels is not None:
            starts = labels.start_states(start_state)
            primed = primed or prime(stepper, vocab, prompt, lines, starts=starts)
            if len(starts) == 1:
                primed = primed[0][0], primed[1]
        self.prompt_logits, self.prompt_state = primed or prime(stepper, vocab, prompt, lines, start_state)
        self.prompt, self.cfg, self.line_mode, self.key = prompt, cfg, lines, key
        self.newline = vocab.index.get("\n", -1) if lines else -1
        self.steps = self.guide.steps if self.guide is not None else cfg.max_length(lines)
        self.seen = seen if seen is not None else set()
        self.training_lines = training_lines if cfg.novel else None
        self.exclude, self.on_char = exclude, on_char
        self.stats = stats if stats is not None else SampleStats()
        self.rejecting = self.guide is not None and not self.guide.guided and cfg.temperature > 0
        self.warm = warm
        self.adaptive = self.rejecting and not cfg.rejection  # draws in rounds of the adaptive exact sampler
        self.stepper, self.vocab = stepper, vocab
        self.tree: "PrefixTree | LabelTree | None" = None  # taken (or made) at its first round
        self.excluded, self.ruled_out = self._exclusions()
        self.budget = cfg.num * (CONSTRAINED_TRIES if self.rejecting else cfg.max_tries) + 100
        self.produced = 0  # samples kept
        self.attempt = 0  # attempts whose results were taken (the next one to take)
        self.satisfied = 0  # of those, the ones the constraints accepted (kept or not)
        self.issued = 0  # attempts handed out by next_attempts (the next one to hand out)

    def _tree(self) -> "PrefixTree | LabelTree":
        """The adaptive exact sampler for this prompt: a warm one if there is, else a new one."""
        if self.warm is None:
            return self._new_tree()
        tree = self.warm.take(self._warm_key(), self._new_tree)
        tree.use_key(self.key)
        return tree

    def _warm_key(self) -> tuple:
        """What decides a tree's bounds: calls that agree on it can share one."""
        labels = self.labels.key() if self.labels is not None else None
        return (self.prompt, self.line_mode, labels, Constraints.of(self.cfg), self.cfg.settings(), self.steps,
                self.cfg.novel)

    def _exclusions(self) -> tuple[Optional[Excluded], list[tuple[str, str]]]:
        """What the adaptive sampler's tree is told of the samples kept out after the constraints,
        so that its later draws do not return them (tree.Excluded), and what they are, in words:
        the training lines under `novel` for good (they hold for every call with the tree's key),
        and for this call its repeats (`unique`: every sample it accepts is kept or rejected, so
        none may come again) and its `exclude` (given back before a warm tree serves another)."""
        if not self.adaptive:
            return None, []
        training, exclude, unique = self.training_lines, self.exclude or None, self.cfg.unique
        why = [(words, flag) for words, flag, on in (("a training line", "novel", training is not None),
                                                   ("one drawn already", "unique", unique),
                                                   ("excluded", "exclude", exclude is not None)) if on]
        if not why:
            return None, []
        names, prompt = (self.labels.names if self.labels is not None else None), self.prompt

        def excluded(root: int, text: str) -> int:
            text = prompt + text
            if training is not None and line_key(names[root] if names else None, text) in training:
                return FOR_GOOD
            return FOR_CALL if unique or (exclude is not None and text in exclude) else KEPT
        return excluded, why

    def _new_tree(self) -> "PrefixTree | LabelTree":
        """One prefix tree; a blend's with a root per label, under a LabelTree."""
        tree = PrefixTree(self.stepper, self.vocab, self.guide, self.cfg, self.key, self.prompt_logits, self.prompt_state)
        return LabelTree(tree, self.labels.weights, self.key) if self.blend else tree

    @property
    def blend(self) -> bool:
        """Each attempt draws its label: its prompt state is one of several."""
        return self.labels is not None and len(self.labels.names) > 1

    @property
    def done(self) -> bool:
        return self.produced >= self.cfg.num

    def wanted(self) -> int:
        """How many more attempts are worth starting now, besides those running: the samples still
        needed, over the rate at which attempts have been kept so far when redraws are likely
        (unique, novel, exclude, exact constraints), and never past the budget."""
        cfg = self.cfg
        need = cfg.num - self.produced
        # Redraws are likely with --unique/--novel/--exclude and constraints: overdraw by the
        # rate seen so far, so one batch usually suffices (extra draws are wasted work only).
        if cfg.unique or cfg.novel or self.exclude or self.rejecting:
            rate = self.produced / self.attempt if self.attempt else (0.5 if self.rejecting else 0.8)
            target = int(need / max(rate, 0.02) * 1.1) + 8
        else:
            target = need
        return min(target - (self.issued - self.attempt), self.budget - self.issued)

    def next_attempts(self, limit: int = MAX_BATCH) -> Attempts:
        """The next attempts to run (at least one, at most `limit`); a SamplingError once the
        budget is spent."""
        cfg = self.cfg
        if self.tree is not None and self.tree.exhausted:  # no draw can be kept: say so now, not after the budget
            raise SamplingError(_shortfall(cfg, self.produced, self.attempt, True, self.tree.mass,
                                           ruled_out=self.ruled_out))
        if self.issued >= self.budget:
            raise SamplingError(_shortfall(cfg, self.produced, self.attempt, self.rejecting,
                                           self.tree.mass if self.tree is not None else None,
                                           none_kept=self.satisfied == 0))
        b = max(1, min(self.wanted(), limit))
        stream = self.on_char if (b == 1 and cfg.num == 1 and not self.line_mode) else None
        start, self.issued = self.issued, self.issued + b
        indices = np.arange(start, start + b, dtype=np.int64)
        return Attempts(self.prompt_logits, self.prompt_state, indices, self.key, cfg, self.newline, self.steps,
                        self.guide, stream, starts=self.labels.pick(self.key, indices) if self.blend else None)

    def draw_round(self, limit: Optional[int] = None) -> list[Sample]:
        """Adaptive exact sampling (self.tree): one round of the next attempts (at most `limit`,
        default the tree's round_width: what a seed's samples depend on), and what is kept; the tree
        goes back to `warm` with the last samples."""
        if self.tree is None:  # (not before: a drawing that waits its turn leaves a warm tree to others)
            self.tree = self._tree()
        kept = self.take(self.tree.run(self.next_attempts(limit or self.tree.round_width).indices, excluded=self.excluded))
        if self.done and self.warm is not None:
            self.tree.end_call()
            self.warm.give_back(self._warm_key(), self.tree)
        return kept

    def take(self, results: Results) -> list[Sample]:
        """Keep what the oldest attempts not taken yet produced (the results of one next_attempts,
        taken in the order they were handed out), up to cfg.num."""
        cfg, stats, kept = self.cfg, self.stats, []
        mass = self.tree.mass if self.tree is not None else None
        if mass is not None:
            stats.mass = mass
        names = self._labels_of(len(results.texts))
        prompt, unique, seen, training, exclude = self.prompt, cfg.unique, self.seen, self.training_lines, self.exclude
        room, taken, satisfied = cfg.num - self.produced, 0, 0  # (counted here, stored once: a take is thousands)
        for j, (generated, logprob, n_scored, k) in enumerate(zip(results.texts, results.logp.tolist(),
                                                                  results.scored.tolist(), results.kept.tolist())):
            if len(kept) >= room:
                break
            taken += 1
            if generated is None:  # the constraints rejected it
                continue
            satisfied += 1
            text = prompt + generated
            if (self.line_mode and not text) or (unique and text in seen):
                continue
            label = names[j] if names is not None else None
            if (training is not None and line_key(label, text) in training) or (exclude and text in exclude):
                continue
            if unique:
                seen.add(text)
            kept.append(Sample(text, prompt, logprob, n_scored, k, mass, label))
        self.attempt, self.satisfied, self.produced = self.attempt + taken, self.satisfied + satisfied, self.produced + len(kept)
        stats.draws += taken
        stats.rejected_by_constraints += taken - satisfied
        stats.accepted += len(kept)
        return kept

    def _labels_of(self, n: int) -> Optional[list[str]]:
        """The labels of the next n attempts to take (a labelled model's), as their draws picked them."""
        if self.labels is None:
            return None
        if not self.blend:
            return self.labels.names * n
        if self.tree is not None:
            picked = self.tree.picked
        else:
            picked = self.labels.pick(self.key, np.arange(self.attempt, self.attempt + n, dtype=np.int64))
        return [self.labels.names[k] if k >= 0 else None for k in picked.tolist()]


class KeptEngine:
    """A RowEngine kept between calls (a Model's), so that its prefix cache stays warm: a program's
    repeated small calls step only the prefixes no call drew before (measured, the bundled model:
    one name a call 1.46x as fast, 10 names 1.2-1.3x, 100 names 1.3-1.6x; docs/benchmarks.md). The cache follows what is
    drawn (chargen.sampling.prefixes) and changes no sample. Lent to one call at a time: a call that
    finds it lent (another thread's, or an unfinished generator's) gets a fresh engine, as every
    call did before; a call that fails leaves a fresh one for the next."""

    def __init__(self, stepper: Stepper, vocab: Vocab):
        self.stepper, self.vocab = stepper, vocab
        self._engine: Optional[RowEngine] = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self) -> Iterator[RowEngine]:
        if not self._lock.acquire(blocking=False):
            yield RowEngine(self.stepper, self.vocab)
            return
        try:
            if self._engine is None:
                self._engine = RowEngine(self.stepper, self.vocab)
            yield self._engine
        except GeneratorExit:  # a caller that stopped reading, between two steps: its jobs are cancelled
            raise
        except BaseException:
            self._engine = None
            raise
        finally:
            self._lock.release()


def run(stepper: Stepper, vocab: Vocab, drawings: Iterable[Drawing], batch_size: Optional[int] = None,
        kept: Optional[KeptEngine] = None) -> Iterator[Sample]:
    """The samples of each drawing in turn, `batch_size` attempts running at once (default: rounds
    of the tree's round_width for the adaptive exact sampler, ENGINE_WIDTH rows otherwise): as rows end, the next
    attempts start in their place, so the batch stays full until the end. Plain and rejection
    sampling may run in worker processes (`workers_for`), the rows split among them: the same
    samples either way. `kept`: the engine to borrow (a Model's), else a fresh one; workers start from
    a copy of it."""
    pool = None
    with kept.lend() if kept is not None else contextlib.nullcontext(RowEngine(stepper, vocab)) as engine:
        try:
            for drawing in drawings:
                if drawing.adaptive:
                    while not drawing.done:
                        yield from drawing.draw_round(batch_size)
                    continue
                n = pool.n if pool is not None else workers_for(stepper, drawing)
                if n == 1:
                    yield from _run_full(engine, drawing, batch_size or ENGINE_WIDTH)
                    continue
                # (each worker starts from a copy of this engine, idle here: a Model's warm prefix cache)
                pool = pool or Workers(stepper, vocab, n, max(1, (batch_size or ENGINE_WIDTH) // n), engine)
                yield from run_parallel(pool, drawing)
        finally:
            if pool is not None:
                pool.close()


def workers_for(stepper: Stepper, drawing: Drawing) -> int:
    """How many processes draw this drawing's attempts: cfg.workers if given, else one per core
    for MIN_PARALLEL samples or more where chargen.sampling.parallel can run. One (this process)
    for a model on torch (forking it is not safe) and for a streamed sample."""
    cfg = drawing.cfg
    refuse_workers(stepper, cfg.workers, inline=1)
    if not forkable(stepper):
        return 1
    if drawing.on_char is not None and cfg.num == 1:
        return 1
    if cfg.workers is not None:
        return cfg.workers
    return cores() if cfg.num >= MIN_PARALLEL and parallel_available() else 1


REFILL = 8  # the batch is topped up once 1/REFILL of it is free (each join copies the batch's buffers)


def _run_full(engine: RowEngine, drawing: Drawing, width: int) -> Iterator[Sample]:
    """One drawing's samples, its attempts keeping the engine `width` rows full. Results are taken
    in attempt order (a job that ends early waits for the ones before it), so what is kept is
    what a batch of any width keeps; attempts still running when enough are kept are dropped."""
    running: deque[int] = deque()  # this drawing's jobs, in attempt order
    finished: dict[int, Results] = {}
    try:
        while not drawing.done:
            room = width - engine.size
            if not running or (room >= max(1, width // REFILL) and drawing.wanted() > 0):
                running.append(engine.add(drawing.next_attempts(room)))  # with none running, past the budget: raises
            finished.update(engine.step())
            while running and running[0] in finished and not drawing.done:
                yield from drawing.take(finished.pop(running.popleft()))
    finally:  # (done, or its caller stopped reading: a kept engine goes on to the next call's jobs)
        for job in running:
            engine.cancel(job)


def generate(
    stepper: Stepper,
    vocab: Vocab,
    prompt: str,
    cfg: SampleConfig,
    *,
    lines: bool,
    key: np.uint64,
    batch_size: Optional[int] = None,
    **options,
) -> Iterator[Sample]:
    """Yield cfg.num samples for one prompt, in order (cfg is validated by the caller); `options`
    are Drawing's (seen, training_lines, exclude, on_char, start_state, automaton, stats).
    `on_char` streams the characters of a lone prose sample as drawn."""
    yield from run(stepper, vocab, [Drawing(stepper, vocab, prompt, cfg, lines=lines, key=key, **options)], batch_size)


def _shortfall(cfg: SampleConfig, produced: int, attempt: int, rejecting: bool,
               mass: Optional[ConstraintMass] = None, none_kept: bool = False,
               ruled_out: Sequence[tuple[str, str]] = ()) -> str:
    why = [name for name, on in (("unique", cfg.unique), ("novel", cfg.novel)) if on]
    what = " and ".join(why) + " " if why else ("" if rejecting else "non-empty ")
    advice = "loosen the constraints, raise `temperature`, or pass `guided`" if rejecting else \
        "ask for fewer, raise `temperature`, or drop `unique`/`novel`/`exclude`"
    if ruled_out and mass is not None and mass.upper > 0:
        words, flags = " or ".join(w for w, _ in ruled_out), " or ".join(f"`{f}`" for _, f in ruled_out)
        return f"the model produced only {produced} of {cfg.num} {what}samples in {attempt:,} draws: every " \
               f"sample that satisfies the constraints at these settings is {words}; loosen the constraints or drop {flags}"
    return f"the model produced only {produced} of {cfg.num} {what}samples in {attempt:,} draws" \
           f"{_how_rare(mass, attempt, none_kept) if rejecting else ''}; {advice}"


def _how_rare(mass: Optional[ConstraintMass], draws: int, none_kept: bool) -> str:
    """What the draws say of Z, the probability the model gives the constraints. Each draw, exact
    rejection or adaptive, is kept with probability at least Z (Z / psi(root), psi <= 1), whatever
    came before it, so none kept in `draws` puts Z below 3 / draws with 95% confidence (the rule of
    three: (1 - Z)^draws <= 0.05); the adaptive sampler's psi(root) bounds it for certain (plus
    the probability of the samples it ruled out: none, when none was kept)."""
    if mass is not None and mass.upper <= 0:
        return ": the constraints rule out every sample the model can draw at these settings"
    if none_kept and draws:
        below = min(3 / draws, mass.upper) if mass is not None else 3 / draws
        return f": the constraints hold less than {below:.2g} of the model's samples at these settings (95% confidence)"
    if mass is not None:
        return f": the constraints hold about {mass.estimate:.2g} of the model's samples at these settings"
    return ""
