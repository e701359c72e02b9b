"""Drawing samples: run the prompt through the network once, then one character at a time,
carrying the recurrent state; many samples advance together as one batch.

Randomness is counter-based: the uniform number that picks character t of sample i is a hash of
(seed, i, t). So the same seed gives the same samples whatever the batch size, whichever backend
(numpy or torch) computed the probabilities, and however many earlier draws were rejected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

import numpy as np

from .config import SampleConfig
from .errors import SamplingError, UsageError, VocabularyError
from .tokenizer import Vocab

MAX_BATCH = 1024  # rows advanced together; bounds memory (state is MAX_BATCH x hidden per layer)


class Stepper(Protocol):
    """What the sampler needs of a network: numpy ids in, numpy logits out, opaque state."""

    vocab_size: int

    def init_state(self, batch_size: int): ...
    def state_from_arrays(self, arrays: list[np.ndarray]): ...
    def select(self, state, rows: np.ndarray): ...
    def repeat(self, state, batch_size: int): ...
    def concat(self, states: list): ...
    def step(self, ids: np.ndarray, state) -> tuple[np.ndarray, object]: ...


class TorchStepper:
    """Adapter that lets the sampler drive a torch CharRNN (on any device)."""

    def __init__(self, model, device=None):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.device = device or next(model.parameters()).device
        self.vocab_size = model.config.vocab_size

    def init_state(self, batch_size: int):
        return self.model.init_state(batch_size, self.device)

    def state_from_arrays(self, arrays: list[np.ndarray]):
        from .model import state_from_tensors

        return state_from_tensors([self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None]
                                   .to(self.device) for a in arrays])  # each (layers, 1, hidden)

    def select(self, state, rows: np.ndarray):
        idx = self.torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        if isinstance(state, tuple):
            return tuple(s.index_select(1, idx) for s in state)
        return state.index_select(1, idx)

    def repeat(self, state, batch_size: int):
        if isinstance(state, tuple):
            return tuple(s.repeat(1, batch_size, 1) for s in state)
        return state.repeat(1, batch_size, 1)

    def concat(self, states: list):
        if isinstance(states[0], tuple):
            return tuple(self.torch.cat(parts, dim=1) for parts in zip(*states))
        return self.torch.cat(states, dim=1)

    def step(self, ids: np.ndarray, state):
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)[:, None]  # (B, 1)
            logits, state = self.model(x, state)
        return logits[:, 0].float().cpu().numpy(), state


# --- counter-based random numbers -------------------------------------------------------------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def derive_key(seed: int, *stream: int) -> np.uint64:
    z = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    for s in stream:
        with np.errstate(over="ignore"):
            z = _mix(z ^ _mix(np.array([s & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLD))
    return z[0]


def uniforms(key: np.uint64, sample_idx: np.ndarray, t: int) -> np.ndarray:
    """One U[0, 1) per sample for step t, a pure function of (key, sample index, t)."""
    with np.errstate(over="ignore"):
        z = _mix(sample_idx.astype(np.uint64) * _GOLD + np.uint64(t) + key)
        z = _mix(z ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


# --- one step's distribution ------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sampling_probs(logits: np.ndarray, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> np.ndarray:
    """(B, V) logits -> (B, V) probabilities after temperature, top-k and top-p (nucleus)."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly ahead of each entry
        keep_sorted = before < top_p  # the smallest prefix whose mass reaches top_p (at least one)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: row b picks the first id whose cumulative probability exceeds u[b]."""
    cdf = np.cumsum(p, axis=-1)
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(ids, p.shape[-1] - 1)


# --- samples ----------------------------------------------------------------------------------


@dataclass
class Sample:
    text: str  # prompt + generated text (without the newline that ended a line)
    prompt: str
    logprob: float  # log-probability under the model (temperature 1) of every generated char,
    n_chars: int  # including the newline that ended a line; n_chars counts them
    kept: float = 0.0  # constrained samples: log of the model's mass the constraints allowed, summed over steps

    @property
    def logprob_per_char(self) -> float:
        return self.logprob / self.n_chars if self.n_chars else 0.0

    @property
    def logprob_guided(self) -> float:
        """Log-probability under the model renormalised at each step over what the constraints allow."""
        return self.logprob - self.kept


@dataclass
class SampleStats:
    """What drawing cost: filled in as samples are drawn (draws = samples tried, accepted = kept)."""

    draws: int = 0
    accepted: int = 0
    rejected_by_constraints: int = 0

    @property
    def satisfied(self) -> int:
        return self.draws - self.rejected_by_constraints

    @property
    def satisfied_share(self) -> float:
        """Share of draws that met the constraints: under exact sampling, an estimate of the
        probability the model (at these settings) gives to the constraints."""
        return self.satisfied / self.draws if self.draws else 1.0


@dataclass
class Guide:
    """Constraints for one prompt: the automaton, its state after the prompt, and how to use it.

    exact (guided=False): draw from the model's distribution and reject a sample at the first
    character from which the constraints can no longer be met; accepted samples then follow the
    model's distribution conditioned on the constraints. guided: draw only among the allowed
    characters, renormalised; no draw is wasted, but the distribution is not the conditional one.
    """

    automaton: "Automaton"  # noqa: F821
    start: int
    n0: int  # characters of the prompt
    guided: bool = False

    @property
    def steps(self) -> int:
        return self.automaton.max_len - self.n0 + 1  # the last step can only be the newline


def initial_state(stepper: Stepper, start_state: Optional[list[np.ndarray]]):
    """A batch-of-one state: the model's typical end-of-line state if the checkpoint has one."""
    return stepper.init_state(1) if start_state is None else stepper.state_from_arrays(start_state)


def check_prompt(vocab: Vocab, prompt: str, lines: bool) -> None:
    bad = vocab.unknown_chars(prompt)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise VocabularyError(f"the prompt holds {shown}, not in the model's vocabulary")
    if lines and "\n" in prompt:
        raise UsageError("a prompt in line mode cannot hold a newline")


def prime(stepper: Stepper, vocab: Vocab, prompt: str, lines: bool, start_state: Optional[list[np.ndarray]] = None):
    """Run "\\n" (start of a line) and the prompt through the network once: (logits (V,), state)."""
    check_prompt(vocab, prompt, lines)
    start = "\n" if "\n" in vocab else (" " if " " in vocab else vocab.chars[0])
    ids = vocab.encode(start + prompt).astype(np.int64)
    state = initial_state(stepper, start_state)
    logits = None
    for i in ids:  # the prefix runs once, then its state is shared by every sample
        logits, state = stepper.step(np.array([i]), state)
    return logits[0], state


def _run_batch(stepper: Stepper, vocab: Vocab, prompt_logits: np.ndarray, prompt_state, indices: np.ndarray,
               cfg: SampleConfig, key: np.uint64, lines: bool, max_len: int,
               on_char: Optional[Callable[[str], None]] = None,
               guide: Optional[Guide] = None) -> tuple[list[Optional[str]], np.ndarray, np.ndarray, np.ndarray]:
    """Advance len(indices) samples together until each ends (newline in line mode) or hits max_len.

    Returns the generated texts (without the ending newline; None where a guide rejected the
    sample), their log-probabilities, how many characters each covers, and the log of the mass
    the constraints kept along each.
    """
    b = len(indices)
    newline = vocab.index.get("\n", -1) if lines else -1
    codepoints = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
    steps = guide.steps if guide is not None else max_len
    out = np.zeros((b, steps), dtype=np.uint32)  # code points; 0 pads (NUL is never in a vocabulary)
    logp, kept = np.zeros(b), np.zeros(b)
    scored = np.zeros(b, dtype=np.int64)
    rejected = np.zeros(b, dtype=bool)
    active = np.arange(b)  # rows still generating
    dfa = np.full(b, guide.start if guide is not None else 0, dtype=np.int64)  # automaton state per active row
    state = stepper.repeat(prompt_state, b)
    logits = np.broadcast_to(prompt_logits, (b, prompt_logits.shape[-1]))
    for t in range(steps):
        lsm = log_softmax(logits)  # (b_active, V), the model's own distribution
        allowed = guide.automaton.allowed(dfa, guide.n0 + t) if guide is not None else None
        if allowed is not None:
            kept[active] += np.log(np.where(allowed, np.exp(lsm), 0.0).sum(axis=-1))
        masked = logits if allowed is None or not (guide.guided or cfg.temperature == 0) else \
            np.where(allowed, logits, -np.inf)
        if cfg.temperature == 0:
            ids = masked.argmax(axis=-1)
        else:
            p = sampling_probs(masked, cfg.temperature, cfg.top_k, cfg.top_p)
            ids = draw(p, uniforms(key, indices[active], t))
        logp[active] += np.take_along_axis(lsm, ids[:, None], axis=-1)[:, 0]
        scored[active] += 1
        ended = ids == newline
        if allowed is not None:
            bad = ~allowed[np.arange(len(ids)), ids]
            rejected[active[bad]] = True
            ended |= bad
            dfa = guide.automaton.advance(dfa, ids)
        out[active, t] = np.where(ended, 0, codepoints[ids])
        if on_char is not None and not ended[0]:
            on_char(vocab.chars[int(ids[0])])
        if ended.any():
            keep = np.flatnonzero(~ended)
            if keep.size == 0:
                break
            active, ids, dfa = active[keep], ids[keep], dfa[keep]
            state = stepper.select(state, keep)
        if t + 1 < steps:
            logits, state = stepper.step(ids, state)
    # A row of code points viewed as a fixed-width numpy string drops its trailing NUL padding.
    texts = np.ascontiguousarray(out).view(f"<U{steps}").ravel().tolist()
    return [None if r else text for text, r in zip(texts, rejected.tolist())], logp, scored, kept


def generate(
    stepper: Stepper,
    vocab: Vocab,
    prompt: str,
    cfg: SampleConfig,
    *,
    lines: bool,
    key: np.uint64,
    seen: Optional[set[str]] = None,
    training_lines: Optional[set[str]] = None,
    exclude: Optional[set[str]] = None,
    batch_size: int = MAX_BATCH,
    on_char: Optional[Callable[[str], None]] = None,
    start_state: Optional[list[np.ndarray]] = None,
    automaton: Optional["Automaton"] = None,  # noqa: F821
    stats: Optional[SampleStats] = None,
) -> Iterator[Sample]:
    """Yield cfg.num samples for one prompt, in order (cfg is validated by the caller).

    Line mode redraws empty samples, repeats (`unique`), training lines (`novel`), lines in
    `exclude` and, under an exact `automaton`, samples that break the constraints; a bounded
    number of draws per wanted sample guards against a model that cannot produce enough.
    Attempt i always uses random stream i, so what is printed does not depend on batch size.
    `on_char` streams the characters of a lone prose sample as drawn.
    """
    guide = guide_for(automaton, vocab, prompt, cfg, lines)
    max_len = cfg.max_length(lines)
    prompt_logits, prompt_state = prime(stepper, vocab, prompt, lines, start_state)
    seen = seen if seen is not None else set()
    stats = stats if stats is not None else SampleStats()
    rejecting = guide is not None and not guide.guided and cfg.temperature > 0
    budget = cfg.num * (CONSTRAINED_TRIES if rejecting else cfg.max_tries) + 100
    produced, attempt = 0, 0
    while produced < cfg.num:
        if attempt >= budget:
            raise SamplingError(_shortfall(cfg, produced, attempt, rejecting))
        need = cfg.num - produced
        # Redraws are likely with --unique/--novel/--exclude and constraints: overdraw by the
        # rate seen so far, so one batch usually suffices (extra draws are wasted work only).
        if cfg.unique or cfg.novel or exclude or rejecting:
            rate = produced / attempt if attempt else (0.5 if rejecting else 0.8)
            want = int(need / max(rate, 0.02) * 1.1) + 8
        else:
            want = need
        b = max(1, min(want, batch_size, budget - attempt))
        indices = np.arange(attempt, attempt + b, dtype=np.int64)
        stream = on_char if (b == 1 and cfg.num == 1 and not lines) else None
        texts, logps, counts, kept = _run_batch(stepper, vocab, prompt_logits, prompt_state, indices, cfg, key,
                                                lines, max_len, stream, guide)
        for generated, logprob, n_scored, k in zip(texts, logps.tolist(), counts.tolist(), kept.tolist()):
            if produced >= cfg.num:
                break
            attempt += 1
            stats.draws += 1
            if generated is None:
                stats.rejected_by_constraints += 1
                continue
            text = prompt + generated
            if lines and not text:
                continue
            if cfg.unique and text in seen:
                continue
            if (cfg.novel and training_lines is not None and text in training_lines) or (exclude and text in exclude):
                continue
            if cfg.unique:
                seen.add(text)
            produced += 1
            stats.accepted += 1
            yield Sample(text=text, prompt=prompt, logprob=logprob, n_chars=n_scored, kept=k)


CONSTRAINED_TRIES = 2000  # draws per wanted sample under exact constraints: down to ~0.05% acceptance


def guide_for(automaton, vocab: Vocab, prompt: str, cfg: SampleConfig, lines: bool) -> Optional[Guide]:
    """The constraints for this prompt, with the length cap the sample options set; checked up front."""
    if automaton is None:
        return None
    if not lines:
        raise UsageError("constraints apply to line samples; this is prose (pass --lines to sample lines)")
    bounded = automaton.bounded(len(prompt) + cfg.max_length(lines))
    start = bounded.start(prompt, vocab)
    if cfg.unique:
        possible = bounded.count(start, len(prompt))
        if possible < cfg.num:
            raise UsageError(f"only {int(possible):,} distinct samples satisfy the constraints, fewer than the "
                             f"{cfg.num:,} asked for with --unique; ask for fewer (--top {int(possible)} lists them all)")
    return Guide(bounded, start, len(prompt), guided=cfg.guided)


def _shortfall(cfg: SampleConfig, produced: int, attempt: int, rejecting: bool) -> str:
    why = [name for name, on in (("unique", cfg.unique), ("novel", cfg.novel)) if on]
    what = " and ".join(why) + " " if why else ("" if rejecting else "non-empty ")
    advice = "loosen the constraints, raise --temperature, or pass --guided" if rejecting else \
        "ask for fewer, raise --temperature, or drop --unique/--novel/--exclude"
    return f"the model produced only {produced} of {cfg.num} {what}samples in {attempt:,} draws; {advice}"
