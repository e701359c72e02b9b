"""The Python API the CLI is built on: load a checkpoint and sample, or train a model.

Nothing here prints or exits; every failure is a ChargenError.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Iterator, Optional, Sequence

import numpy as np

from .checkpoint import BEST, Checkpoint, checkpoint_path, default_checkpoint, read_checkpoint
from .config import LoadConfig, SampleConfig, check_type, declared, label_spec, parse_duration
from .errors import CheckpointError, ConfigError, UsageError, VocabularyError
from .extras import gpu_present, require_torch
from .files import stamp
from .npmodel import NumpyCharRNN
from .sampling.constraints import Automaton, Constraints, guide_for, line_samples_only
from .sampling.drawing import Drawing, KeptEngine, Sample, SampleStats, check_prompt, prime, run
from .sampling.labels import LabelMix, line_key, resolve_labels
from .sampling.randomness import Seeds, derive_key
from .sampling.search import most_likely
from .sampling.tree import WarmTrees
from .tokenizer import describe_chars

if TYPE_CHECKING:  # scoring's modules (and training.data's file reading) load when a model scores, not to sample
    from .evaluation import NumpyScorer, Score

PRIMED_PROMPTS = 256  # prompts whose primed state a Model keeps
AUTOMATA_KEPT = 32  # sets of constraints whose compiled automaton a Model keeps (each a few ms to compile)
MIXES_KEPT = 256  # `label=` specs whose LabelMix a Model keeps (0.4 ms each to resolve among the base's 248 labels, as it had then)
# Options a `top` request refuses: it ranks by the model's own probabilities (temperature 1, no
# truncation), needs no seed, never repeats, and has no guided mode. `lines` has a message of its own.
_TOP_REFUSED = tuple(name for name, d in declared(SampleConfig).items() if not d.takes("top") and name != "max_tries")


def _prompts(prompt: Any) -> list[str]:
    """`prompt` as a list: one text, or any iterable of texts (one drawing each)."""
    if isinstance(prompt, Iterable) and not isinstance(prompt, (str, bytes, bytearray)):  # (bytes: b"Ma" is no [77, 97])
        prompt = list(prompt)
    check_type("prompt", prompt, "str | list[str]")
    return [prompt] if isinstance(prompt, str) else prompt


class _Recent:
    """The values made for the most recent `size` keys, for calls from any thread (a server's
    requests): a value is made outside the lock, so two calls may both make one, to the same effect."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class Model:
    """A trained chargen model, ready to sample from.

    The numpy backend (the default on CPU) starts fast and never imports torch; the torch
    backend runs on any device torch supports (`device="cuda"`).
    """

    def __init__(self, checkpoint: Checkpoint, backend: str = "auto", device: Optional[str] = None):
        # (a device torch does not know would be its RuntimeError: the declaration's choices are checked first)
        backend = LoadConfig.from_dict({"backend": backend, "device": device}).chosen_backend(gpu_present)
        self.checkpoint = checkpoint
        self.vocab = checkpoint.vocab
        self.backend = backend
        self._device = device
        self._file = _file_stamp(checkpoint.path)  # what __reduce__ checks another process loads
        if backend == "numpy":
            self.stepper = NumpyCharRNN(checkpoint.model_config, checkpoint.weights)
        else:
            require_torch("the torch backend")
            from .model import TorchStepper, from_weights  # these import torch: the torch backend only
            from .training.device import resolve_device

            dev = resolve_device(device or "auto")
            self.stepper = TorchStepper(from_weights(checkpoint.model_config, checkpoint.weights).to(dev), dev)
        self._training_lines: Optional[set[str]] = None
        self._primed = _Recent(PRIMED_PROMPTS)  # (prompt, lines, labels) -> (logits, state) after it
        self._automata = _Recent(AUTOMATA_KEPT)  # Constraints -> their Automaton for this vocabulary
        self._mixes = _Recent(MIXES_KEPT)  # label= -> its LabelMix (a server's requests ask the same few)
        self._seeds = Seeds()  # for calls without a seed
        self._warm_trees = WarmTrees()  # the adaptive exact sampler's, kept between calls without a seed
        self._engine = KeptEngine(self.stepper, self.vocab)  # its prefix cache warm from call to call

    def __reduce__(self):
        """A Model sent to another process (multiprocessing; its spawn start, macOS's default,
        pickles what a worker is given) is loaded there again from its file, as chargen.load
        loads it: its engines, caches and locks are this process's own. A file changed since this
        Model was loaded is an error there, not other weights under the same name."""
        if self._file is None:
            raise CheckpointError(f"this model's checkpoint {self.checkpoint.path} is not a file: it cannot be sent "
                                  f"to another process, which loads it from its file")
        return _load_again, (str(Path(self.checkpoint.path).resolve()), self.backend, self._device, self._file)

    @property
    def line_oriented(self) -> bool:
        return self.checkpoint.line_oriented

    @property
    def labels(self) -> Optional[list[str]]:
        """A labelled model's labels (sample with `label=`); None for a model without."""
        return self.checkpoint.labels

    def label_mix(self, label: Optional[str | dict[str, float]]) -> Optional[LabelMix]:
        """What `label=` asks of this model (chargen.sampling.labels); None for a model without labels."""
        ckpt = self.checkpoint
        label = label_spec(label)
        return self._mixes.get(label, lambda: resolve_labels(label, ckpt.labels, ckpt.label_counts, ckpt.label_default))

    @property
    def training_lines(self) -> Optional[set[str]]:
        if self._training_lines is None and self.checkpoint.training_lines is not None:
            self._training_lines = set(self.checkpoint.training_lines)
        return self._training_lines

    def samples(self, n: int = 1, prompt: str | Sequence[str] = "", *, stats: Optional[SampleStats] = None,
                on_char: Optional[Callable[[str], None]] = None, **options: Any) -> Iterator[Sample]:
        """`n` Sample objects (text, prompt, logprob, kept) per prompt, in order, as they are drawn.

        `options` are chargen.SampleConfig's (temperature, top_k, top_p, seed, lines, unique,
        novel, exclude, workers, and the constraints min_len, max_len, ends_with, contains, regex,
        guided):
        `help(chargen.SampleConfig)` and the README list them. Under constraints the samples follow
        the model's distribution conditioned on them exactly (a sample is dropped at the first
        character that rules it out); `guided=True` draws only among allowed characters instead:
        never wasted, but not the conditional distribution. `stats` (a SampleStats) is filled in
        with the draws made; `on_char` receives a lone prose sample's characters as drawn. The
        options are checked here, before the first sample: a bad one raises at once. `prompt` may
        be an iterator (lines typed at a terminal): each prompt is then read, checked and drawn
        in turn, the samples a list of the same prompts gives."""
        return run(self.stepper, self.vocab, self.drawings(n, prompt, stats=stats, on_char=on_char, **options),
                   kept=self._engine)

    def drawings(self, n: int = 1, prompt: str | Sequence[str] = "", *, stats: Optional[SampleStats] = None,
                 on_char: Optional[Callable[[str], None]] = None, **options: Any) -> Iterator[Drawing]:
        """What `samples` runs: one chargen.sampling.Drawing per prompt, in order, made as they are
        needed. The options are checked here, before the first one: a bad one raises at once. A
        caller that runs several calls' drawings together (`chargen serve`) gets the same samples
        as `samples` would."""
        cfg = self._config(n, options)
        line_mode = self._line_mode(cfg)
        # An iterator's prompts (lines typed at a terminal) are checked as they come, the rest before the first
        lazy = isinstance(prompt, Iterator)
        prompts = prompt if lazy else self._prompts(prompt)
        automaton = self._automaton(cfg, line_mode)
        for p in [] if lazy else prompts:
            self._check_prompt(p, cfg, automaton, line_mode)
        banned = self._exclude(cfg.exclude, line_mode)
        base_seed = self._seeds() if cfg.seed is None else cfg.seed
        stats = stats if stats is not None else SampleStats()
        training = self.training_lines if cfg.novel else None
        mix = self.label_mix(cfg.label)

        def drawings() -> Iterator[Drawing]:
            seen: set[str] = set()
            for j, p in enumerate(prompts):
                if lazy:
                    p = self._prompts(p)[0]
                    self._check_prompt(p, cfg, automaton, line_mode)
                yield Drawing(self.stepper, self.vocab, p, cfg, lines=line_mode, key=derive_key(base_seed, j), seen=seen,
                              training_lines=training, exclude=banned, on_char=on_char, automaton=automaton,
                              stats=stats, primed=self._prime(p, line_mode, mix), labels=mix,
                              start_state=self.checkpoint.start_state,
                              warm=self._warm_trees if cfg.seed is None else None)

        return drawings()

    def _prime(self, prompt: str, lines: bool, mix: Optional[LabelMix] = None) -> tuple:
        """The network's logits and state after a prompt (from each label of `mix`), kept for the
        most recent prompts: a server sees the same few prompts (the empty one above all) again and again."""
        key = (prompt, lines, mix.key() if mix is not None else None)
        start = self.checkpoint.start_state
        return self._primed.get(key, lambda: prime(self.stepper, self.vocab, prompt, lines, start,
                                                   starts=mix.start_states(start) if mix else None))

    def top(self, n: int = 10, prompt: str | Sequence[str] = "", *, progress: Optional[Callable[[int], None]] = None,
            **options: Any) -> Iterator[Sample]:
        """The `n` most probable complete line samples under the model (temperature 1) per prompt,
        best first: exact best-first search (chargen.sampling.search). `options` are those of
        SampleConfig that a top request takes (length, lines, novel, exclude, the constraints).
        `progress`, if given, is told the prefixes searched so far (each prompt's search from 0)
        after each network step of the search: a long one (a wide blend and a rare pattern) takes minutes."""
        refused = [f"`{k}`" for k, v in options.items()
                   if k in _TOP_REFUSED and v is not None and v is not False]
        if refused:
            raise UsageError(f"`top` ranks by the model's own probabilities and never repeats; drop {', '.join(refused)}")
        if isinstance(n, int) and n < 1:  # (a count of another type is refused as sample's is)
            raise UsageError(f"`top` must be at least 1 (got {n})")
        cfg = self._config(n, options)
        if cfg.lines is False or (cfg.lines is None and not self.line_oriented):
            raise line_samples_only("`top`", self.line_oriented if cfg.lines is None else True, "applies")
        prompts = self._prompts(prompt)
        automaton = self._automaton(cfg, True)
        for p in prompts:
            self._check_prompt(p, cfg, automaton, True)
        automaton = automaton or Automaton(Constraints(), self.vocab)
        bounded = {p: automaton.bounded(len(p) + cfg.max_length(True)) for p in prompts}
        for p in prompts:
            bounded[p].start(p, self.vocab)  # raises now if nothing can start with this prompt
        banned = self._exclude(cfg.exclude, True) or set()
        training = self.training_lines if cfg.novel else set()
        mix = self.label_mix(cfg.label)
        # Under a blend (or a part) the samples are ranked by their mixture probability.
        starts = mix.start_states(self.checkpoint.start_state) if mix is not None else [self.checkpoint.start_state]
        weights = mix.weights if mix is not None else np.ones(1)
        labels = mix.names if mix is not None else [None]

        def skip(text: str) -> bool:
            return text in banned or any(line_key(label, text) in training for label in labels)

        def results() -> Iterator[Sample]:
            for p in prompts:
                # Under a blend each sample's label is the one that gives it most of its probability.
                yield from most_likely(self.stepper, self.vocab, p, n, bounded[p], skip=skip, starts=starts,
                                       weights=weights, names=mix.names if mix is not None else None,
                                       progress=progress)

        return results()

    def _config(self, n: int, options: dict[str, Any]) -> SampleConfig:
        """The sample options of `samples` and `top`, checked, their texts spelt as the vocabulary
        spells them (Vocab.conform: é typed as e and an accent is é)."""
        cfg = SampleConfig.of(n=n, **options)
        if cfg.novel and self.training_lines is None:
            raise UsageError(f"{self.checkpoint.path} keeps no training lines (its corpus is not line-oriented), "
                             f"so `novel` cannot be checked")
        conform = self.vocab.conform
        return dataclasses.replace(cfg, ends_with=cfg.ends_with and conform(cfg.ends_with),
                                   contains=[conform(c) for c in cfg.contains],
                                   exclude=None if cfg.exclude is None else [conform(x) for x in cfg.exclude])

    def _prompts(self, prompt: Any) -> list[str]:
        return [self.vocab.conform(p) for p in _prompts(prompt)]

    def _automaton(self, cfg: SampleConfig, line_mode: bool) -> Optional[Automaton]:
        """The constraints compiled for this vocabulary (None without any)."""
        constraints = Constraints.of(cfg)
        if not constraints:
            return None
        if not line_mode:
            raise line_samples_only(f"constraints ({', '.join(constraints.names())})", self.line_oriented)
        return self._automata.get(constraints, lambda: Automaton(constraints, self.vocab))  # (compiling takes ms)

    def check_prompt(self, prompt: str | Sequence[str], **options: Any) -> None:
        """Raise what `samples(prompt=prompt, **options)` raises for this prompt (or these): a
        character the model does not know, or under constraints a start that no sample satisfies
        them from; without drawing (a prompt typed at a terminal is checked before it is drawn).
        The options are checked too."""
        cfg = self._config(1, options)
        line_mode = self._line_mode(cfg)
        automaton = self._automaton(cfg, line_mode)
        for p in self._prompts(prompt):
            self._check_prompt(p, cfg, automaton, line_mode)

    def _line_mode(self, cfg: SampleConfig) -> bool:
        """Whether samples are lines: as asked, else as the model's corpus. Prose from a model
        trained line by line (each line from its learned start state) is refused: it never learnt
        what follows a line's end, and past the first newline drew lone letters and blank lines."""
        self._refuse_prose(cfg.lines, "draws", " (`num` for how many)")
        return self.line_oriented if cfg.lines is None else cfg.lines

    def _refuse_prose(self, lines: Optional[bool], verb: str, after: str = "") -> None:
        """A UsageError for lines=False on a model trained line by line (its learned start state)."""
        if lines is False and self.checkpoint.model_config.learned_start:
            raise UsageError(f"this model learnt each line on its own, from a line's start, never what follows a "
                             f"line's end: it {verb} lines only; drop `no_lines`{after}")

    def _check_prompt(self, prompt: str, cfg: SampleConfig, automaton: Optional[Automaton], line_mode: bool) -> None:
        """A prompt the model can start from, and (under constraints) one a sample can satisfy them from."""
        check_prompt(self.vocab, prompt, line_mode)
        if automaton is not None:
            guide_for(automaton, self.vocab, prompt, cfg, True)

    def _exclude(self, lines: Optional[Iterable[str]], line_mode: bool) -> Optional[set[str]]:
        if lines is None:
            return None
        if not line_mode:
            raise line_samples_only("`exclude`", self.line_oriented, "applies")
        return set(lines)

    def sample(self, n: int = 10, prompt: str = "", **options: Any) -> list[str]:
        """`n` samples as strings, e.g. `model.sample(n=10, prompt="Ma", temperature=0.8, seed=1)`."""
        return [s.text for s in self.samples(n, prompt, **options)]

    def stream(self, prompt: str = "", **options: Any) -> Iterator[str]:
        """Yield one sample's characters as they are drawn (prose), or lines (line mode)."""
        line_mode = self.line_oriented if options.get("lines") is None else options["lines"]
        if line_mode:
            for s in self.samples(options.pop("n", 1), prompt, **options):
                yield s.text
            return
        chunks: list[str] = []
        options.pop("n", None)
        yield prompt
        for _ in self.samples(1, prompt, on_char=chunks.append, **options):
            pass
        yield from chunks

    def eval(self, text: str, *, skip_unknown: bool = False, lines: Optional[bool] = None,
             streams: Optional[int] = None, label: Optional[str] = None,
             progress: Optional[Callable[[float], None]] = None) -> dict[str, float]:
        """Loss of the model on `text`: nats and bits per character, and perplexity.

        Defined as training's validation loss (chargen.evaluation): a line-oriented model (or
        lines=True) scores each line on its own, from its start-of-line state, the newline that
        ends it included, as it samples. Otherwise the text is laid out in `streams` (default 32)
        contiguous streams read in parallel with the state carried, in the checkpoint's windows.
        Characters outside the vocabulary are an error, or with `skip_unknown=True` are dropped
        and counted. A labelled model scores each line under `label` (as `samples` takes it; a
        blend or a part: the mixture's probability), by default under every label in training
        proportions: the model's own probability of the line when it does not know its label.
        `progress`, if given, is told the share of the text scored so far (0 to 1) as it goes.
        """
        from .evaluation import EVAL_STREAMS, NumpyScorer, evaluate_text

        if isinstance(text, (list, tuple)):
            raise ConfigError(f"`text` must be text, one str (got a {type(text).__name__}): a list of lines is "
                              f"'\\n'.join(lines) + '\\n', or model.score(lines) for each line's own")
        check_type("text", text, "str")
        self._refuse_prose(lines, "scores")  # (a stream's loss it never learnt)
        text = self.vocab.conform(text)
        mix = self.label_mix(label)
        if mix is not None:
            return self._eval_labelled(text, mix, skip_unknown, lines, progress)
        c = self.checkpoint.model_config
        if self.backend == "torch":
            from .training.scorer import TorchScorer  # imports torch: the torch backend only

            scorer = TorchScorer(self.stepper.model, self.stepper.device)
        else:
            scorer = NumpyScorer(self.stepper)
        start_state = self.checkpoint.start_state or [np.zeros((c.layers, c.hidden), np.float32)] * c.state_tensors
        result = evaluate_text(scorer, self.vocab, text, lines=self.line_oriented if lines is None else lines,
                               start_state=start_state, seq_len=int(self.checkpoint.train_config.get("seq_len", 128)),
                               streams=streams or EVAL_STREAMS, skip_unknown=skip_unknown, progress=progress)
        return result.to_dict()

    def _numpy_scorer(self) -> NumpyScorer:
        """The numpy twin a line at a time (score and labelled eval run on numpy whatever the backend)."""
        from .evaluation import NumpyScorer

        return NumpyScorer(self.stepper if self.backend == "numpy" else
                           NumpyCharRNN(self.checkpoint.model_config, self.checkpoint.weights))

    def _eval_labelled(self, text: str, mix: LabelMix, skip_unknown: bool, lines: Optional[bool],
                       progress: Optional[Callable[[float], None]]) -> dict[str, float]:
        if lines is False:
            raise UsageError("a labelled model scores lines, each from its label's start state; drop `lines=False`")
        from .evaluation import EvalResult, mixture_nlls
        from .training.data import line_ids

        unknown = self.vocab.count_unknown(text) if skip_unknown else 0
        rows = line_ids(self.vocab, self.vocab.decode(self.vocab.encode(text, skip_unknown=skip_unknown)))
        if not rows:
            raise UsageError("the text holds no non-empty line to evaluate")
        nll, _ = mixture_nlls(self._numpy_scorer(), rows, mix.start_states(self.checkpoint.start_state), mix.weights,
                              self.vocab.index["\n"], progress=progress)
        count = sum(len(r) for r in rows)
        return EvalResult(loss=float(nll.sum()) / count, chars=count, skipped=unknown).to_dict()

    def score(self, lines: Iterable[str], *, skip_unknown: bool = False, batch: int = 2048, label: Optional[str] = None,
              by_label: bool = False) -> Iterator[Score]:
        """Each line's log-probability under the model, in order, as chargen.evaluation.Score: scored
        from the start of a line as a sample is drawn (at temperature 1), the newline that ends it
        included, so a sampled name scores its own `logprob`. A line holding a character the model
        does not know is an error naming it, or with `skip_unknown=True` scores -inf (impossible).
        Lines are read and scored `batch` at a time: a long input streams. Runs on numpy, whatever
        the backend. A labelled model scores under `label` (as `samples` takes it: one, a part, a
        blend: the mixture's probability; default: every label in training proportions), and with
        `by_label` also under each of those labels, with the likeliest label and its posterior
        probability (the blend's weights as the prior): a classifier."""
        from .evaluation import Score, line_nlls, mixture_nlls

        if isinstance(lines, (str, bytes)):  # (iterating one would score each character as a line)
            raise ConfigError(f"`lines` must be a list of lines, not one text (got {lines!r:.40}): score([text]) scores one")
        if "\n" not in self.vocab:
            raise UsageError("this model's vocabulary has no newline, so it cannot score lines")
        mix = self.label_mix(label)
        if by_label and mix is None:
            raise UsageError("`by_label` needs a labelled model; this one has no labels")
        scorer = self._numpy_scorer()
        newline = self.vocab.index["\n"]
        for first, chunk in _chunks(lines, batch):
            spelt = [self.vocab.conform(t) for t in chunk]  # (a line's score keeps its text as given)
            broken = next((i for i, t in enumerate(spelt) if "\n" in t), None)
            if broken is not None:  # (scored on, its second part would follow the first's end, not a line's start)
                raise UsageError(f"line {first + broken + 1} holds a newline: each item is one line (split the "
                                 f"text into lines first: text.splitlines())")
            encoded, whole = self.vocab.encode_lines(spelt)
            unknown = [() if ok else tuple(self.vocab.unknown_chars(t)) for t, ok in zip(spelt, whole.tolist())]
            for i, bad in enumerate(unknown):
                if bad and not skip_unknown:
                    mac = "; a lone CR ends the lines of old Mac files: tr '\\r' '\\n' makes them LF" if "\r" in bad else ""
                    raise VocabularyError(f"line {first + i + 1} holds {describe_chars(bad)}, not in the "
                                          f"model's vocabulary (with `skip_unknown` such a line scores -inf){mac}")
            known = np.flatnonzero(whole).tolist()
            ids = [encoded[i] for i in known]
            if mix is None:
                nll = dict(zip(known, line_nlls(scorer, ids, self.checkpoint.start_state, newline) if ids else []))
                per = {}
            else:
                mixed, each = mixture_nlls(scorer, ids, mix.start_states(self.checkpoint.start_state), mix.weights,
                                           newline) if ids else ([], [])
                nll, per = dict(zip(known, mixed)), dict(zip(known, each))
            for i, text in enumerate(chunk):
                score = Score(text, float(-nll[i]) if i in nll else -math.inf, len(spelt[i]) + 1, unknown[i])
                if by_label:
                    _classify(score, mix, per.get(i))
                yield score

    def __repr__(self) -> str:
        c = self.checkpoint.model_config
        return f"chargen.Model({self.checkpoint.path}, {c.layers}x{c.hidden} {c.cell}, vocab {c.vocab_size})"


def _classify(score: Score, mix: LabelMix, nlls: Optional[np.ndarray]) -> None:
    """Fill in a score's log-probability under each label of `mix` (NLLs `nlls`, None for an
    impossible line), and the likeliest label with its posterior (the mix's weights as the prior)."""
    if nlls is None:
        score.by_label = {name: -math.inf for name in mix.names}
        return
    score.by_label = {name: float(-v) for name, v in zip(mix.names, nlls)}
    post = np.log(mix.weights) - nlls
    post = np.exp(post - post.max())
    post /= post.sum()
    best = int(np.argmax(post))
    score.likeliest, score.p_likeliest = mix.names[best], float(post[best])


def _chunks(items: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first, up to `size` items) in order, reading `items` lazily; a stream's lines
    (chargen.training.ingest.ArrivingLines) in its `batches`, cut where those that have arrived
    end, so that a slow writer's lines are answered as they come."""
    if hasattr(items, "batches"):
        chunks = items.batches(size)
    else:
        it = iter(items)
        chunks = iter(lambda: list(itertools.islice(it, size)), [])
    first = 0
    for chunk in chunks:
        yield first, chunk
        first += len(chunk)


def _list_options(method: Callable, request: str) -> None:
    """Show the options a method takes (`**options`) in its signature, so that help() and editors
    list them: SampleConfig's declarations are the one source."""
    params = list(inspect.signature(method).parameters.values())
    keep = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    declared_options = [inspect.Parameter(d.field, inspect.Parameter.KEYWORD_ONLY, default=d.default,
                                          annotation=d.annotation)
                        for name, d in declared(SampleConfig).items()
                        if name != "num" and (d.takes(request) or (not d.opt.requests and request == "sample"))]
    method.__signature__ = inspect.Signature(keep + declared_options)  # type: ignore[attr-defined]


for _method, _request in ((Model.samples, "sample"), (Model.drawings, "sample"), (Model.top, "top"),
                          (Model.sample, "sample")):
    _list_options(_method, _request)


def _file_stamp(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    """files.stamp, None for no file."""
    try:
        return stamp(path)
    except OSError:
        return None


def _load_again(path: str, backend: str, device: Optional[str], stamp: tuple[int, int]) -> Model:
    """Model.__reduce__'s other half, in the process that receives the model."""
    if _file_stamp(path) != tuple(stamp):
        raise CheckpointError(f"{path} changed (or went) since the model sent to this process was loaded from it; "
                              f"load it again (chargen.load) and send that")
    return Model(read_checkpoint(path), backend=backend, device=device)


def load(path: str | os.PathLike | None = None, *, backend: str = "auto", device: Optional[str] = None) -> Model:
    """Load a checkpoint file or run directory (its best checkpoint), or a bundled model by name
    ("names", "base"); the bundled names model by default. `backend` and `device`: the flags of
    that name (chargen.config.LoadConfig: numpy on the CPU by default, torch for another device)."""
    _check_path("path", path, "a checkpoint's path or a bundled model's name")
    return Model(read_checkpoint(checkpoint_path(path) if path is not None else default_checkpoint(), prefer=BEST),
                 backend=backend, device=device)


def _check_path(name: str, value: Any, what: str) -> Optional[str]:
    """A path keyword, a str or os.PathLike (or None), as a str (as the run records it); anything
    else is a ConfigError naming it."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"`{name}` must be {what} (got {value!r:.40})")
    return None if value is None else os.fspath(value)


def train(corpus_paths: str | os.PathLike | Sequence[str | os.PathLike] = (), *, out: str | os.PathLike | None = None,
          val_file: Optional[str] = None, precision: str = "auto", resume: str | os.PathLike | None = None,
          start_from: str | os.PathLike | None = None, overwrite: bool = False, callbacks=None,
          **options: Any) -> Path:
    """Train on text files ('-' is stdin; one path, or a list) and return the run directory.

    `options` are ModelConfig fields (cell, layers, hidden, embed, dropout) and TrainConfig fields
    (batch_size, seq_len, lr, max_steps, epochs, time in seconds or a duration such as "5m", patience, device, ...); an
    unknown one is a ConfigError. What is left unset of the model and batch sizes is chosen from
    the corpus size, the budget and this device's measured speed (chargen.training.sizing), and recorded
    in config.json. `resume` continues the run in a run
    directory (or from its last.safetensors) exactly; its corpus and validation file are read
    again from the paths it recorded unless given. `callbacks` is a chargen.training.callbacks.TrainCallbacks.
    A run stopped by Ctrl-C or SIGTERM raises TrainingInterrupted after saving. `start_from`
    (a checkpoint, run directory, or "names" for the bundled model; "none" or None: from
    scratch) adapts that model to the corpus (chargen.training.finetune): its shape is kept, its
    vocabulary grows, and the training options left unset get values suited to adapting.

        >>> run_dir = chargen.train(["corpora/names.txt"], time=60, hidden=128)
    """
    if isinstance(corpus_paths, (str, os.PathLike)):  # one file: train("names.txt") as train(["names.txt"])
        corpus_paths = [corpus_paths]
    if corpus_paths is None or not isinstance(corpus_paths, Iterable):
        raise ConfigError(f"`corpus_paths` must be a list of text files' paths (got {corpus_paths!r:.40})")
    corpus_paths = [_check_path("corpus_paths", path, "a list of text files' paths") for path in corpus_paths]
    out = _check_path("out", out, "a directory's path")
    if out == "":  # (Path("") is the current directory: a run written among its files)
        raise UsageError("`out` is empty: name the run's directory (. for this one)")
    val_file = _check_path("val_file", val_file, "a text file's path")
    resume = _check_path("resume", resume, "a run directory or its last.safetensors")
    start_from = _check_path("start_from", start_from, "a checkpoint's path or a bundled model's name")
    if isinstance(options.get("time"), str):  # a duration as the flag and a config file write it: "5m"
        options["time"] = parse_duration(options["time"])
    require_torch("training")
    from .training.setup import train_run  # imports torch

    return train_run(corpus_paths, out=out, val_file=val_file, precision=precision, resume=resume,
                     start_from=start_from, overwrite=overwrite, callbacks=callbacks, **options)
