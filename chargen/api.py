"""The Python API the CLI is built on: load a checkpoint and sample, or train a model.

Nothing here prints or exits; every failure is a ChargenError.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .checkpoint import BEST, Checkpoint, checkpoint_path, default_checkpoint, read_checkpoint
from .config import SampleConfig
from .training.data import read_corpus
from .errors import CheckpointError, TrainingInterrupted, UsageError
from .extras import require_torch

PRIMED_PROMPTS = 256  # prompts whose primed state a Model keeps


class Model:
    """A trained chargen model, ready to sample from.

    The numpy backend (the default on CPU) starts fast and never imports torch; the torch
    backend runs on any device torch supports (`device="cuda"`).
    """

    def __init__(self, checkpoint: Checkpoint, backend: str = "auto", device: Optional[str] = None):
        if backend not in ("auto", "numpy", "torch"):
            raise UsageError(f"--backend must be auto, numpy or torch (got {backend!r})")
        if backend == "auto":
            backend = "torch" if device not in (None, "cpu") else "numpy"
        if backend == "numpy" and device not in (None, "cpu"):
            raise UsageError(f"the numpy backend runs on the CPU only; use --backend torch for --device {device}")
        self.checkpoint = checkpoint
        self.vocab = checkpoint.vocab
        self.backend = backend
        if backend == "numpy":
            from .npmodel import NumpyCharRNN

            self.stepper = NumpyCharRNN(checkpoint.model_config, checkpoint.weights)
        else:
            require_torch("the torch backend")
            from .training.device import resolve_device
            from .model import from_weights
            from .model import TorchStepper

            dev = resolve_device(device or "auto")
            self.stepper = TorchStepper(from_weights(checkpoint.model_config, checkpoint.weights).to(dev), dev)
        self._training_lines: Optional[set[str]] = None
        self._primed: OrderedDict[tuple[str, bool], tuple] = OrderedDict()  # prompt -> (logits, state) after it
        self._primed_lock = threading.Lock()

    @property
    def line_oriented(self) -> bool:
        return self.checkpoint.line_oriented

    @property
    def training_lines(self) -> Optional[set[str]]:
        if self._training_lines is None and self.checkpoint.lines is not None:
            self._training_lines = set(self.checkpoint.lines)
        return self._training_lines

    def samples(
        self,
        n: int = 1,
        prompt: str | Sequence[str] = "",
        *,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        length: Optional[int] = None,
        seed: Optional[int] = None,
        lines: Optional[bool] = None,
        unique: bool = False,
        novel: bool = False,
        min_len: Optional[int] = None,
        max_len: Optional[int] = None,
        ends_with: Optional[str] = None,
        contains: str | Sequence[str] = (),
        regex: Optional[str] = None,
        guided: bool = False,
        exclude: Optional[Iterable[str]] = None,
        stats: Optional["SampleStats"] = None,  # noqa: F821
        on_char=None,
    ) -> Iterator["Sample"]:  # noqa: F821
        """`n` Sample objects (text, prompt, logprob, kept) per prompt, in order, as they are drawn.

        Line samples can be constrained: `min_len`/`max_len` characters (prompt included),
        `ends_with`, `contains` (one text or several), `regex` (the whole sample must match).
        By default the samples follow the model's distribution conditioned on the constraints
        exactly (a sample is dropped at the first character that rules it out); `guided=True`
        draws only among allowed characters instead: never wasted, but not the conditional
        distribution. `exclude` lists lines never to return. `stats` (a SampleStats) is filled
        in with the draws made. The options are checked here, before the first sample: a bad
        one raises at once."""
        from .sampling.drawing import run

        return run(self.stepper, self.vocab, self.draws(
            n, prompt, temperature=temperature, top_k=top_k, top_p=top_p, length=length, seed=seed, lines=lines,
            unique=unique, novel=novel, min_len=min_len, max_len=max_len, ends_with=ends_with, contains=contains,
            regex=regex, guided=guided, exclude=exclude, stats=stats, on_char=on_char))

    def draws(self, n: int = 1, prompt: str | Sequence[str] = "", *, lines: Optional[bool] = None,
              contains: str | Sequence[str] = (), exclude: Optional[Iterable[str]] = None,
              stats: Optional["SampleStats"] = None, on_char=None,  # noqa: F821
              **options: Any) -> Iterator["Drawing"]:  # noqa: F821
        """What `samples` runs: one chargen.sampling.Drawing per prompt, in order, made as they are
        needed. The options (those of `samples`) are checked here, before the first one: a bad one
        raises at once. A caller that runs several calls' drawings together (`chargen serve`)
        gets the same samples as `samples` would."""
        from .sampling.drawing import Drawing, SampleStats, check_prompt
        from .sampling.randomness import derive_key, random_seed

        line_mode = self.line_oriented if lines is None else lines
        cfg = self._config(num=n, lines=line_mode, contains=contains, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        automaton = self._automaton(cfg, prompts)
        if automaton is None:
            for p in prompts:
                check_prompt(self.vocab, p, line_mode)
        banned = self._exclude(exclude, line_mode)
        base_seed = random_seed() if cfg.seed is None else cfg.seed
        stats = stats if stats is not None else SampleStats()
        training = self.training_lines if cfg.novel else None

        def drawings() -> Iterator[Drawing]:
            seen: set[str] = set()
            for j, p in enumerate(prompts):
                yield Drawing(self.stepper, self.vocab, p, cfg, lines=line_mode, key=derive_key(base_seed, j), seen=seen,
                              training_lines=training, exclude=banned, on_char=on_char, automaton=automaton,
                              stats=stats, primed=self._prime(p, line_mode))

        return drawings()

    def _prime(self, prompt: str, lines: bool) -> tuple:
        """The network's logits and state after a prompt, kept for the most recent prompts: a
        server sees the same few prompts (the empty one above all) again and again."""
        from .sampling.drawing import prime

        key = (prompt, lines)
        with self._primed_lock:
            if key in self._primed:
                self._primed.move_to_end(key)
                return self._primed[key]
        primed = prime(self.stepper, self.vocab, prompt, lines, self.checkpoint.start_state)
        with self._primed_lock:
            self._primed[key] = primed
            while len(self._primed) > PRIMED_PROMPTS:
                self._primed.popitem(last=False)
        return primed

    def top(
        self,
        n: int = 10,
        prompt: str | Sequence[str] = "",
        *,
        length: Optional[int] = None,
        novel: bool = False,
        min_len: Optional[int] = None,
        max_len: Optional[int] = None,
        ends_with: Optional[str] = None,
        contains: str | Sequence[str] = (),
        regex: Optional[str] = None,
        exclude: Optional[Iterable[str]] = None,
    ) -> Iterator["Sample"]:  # noqa: F821
        """The `n` most probable complete line samples under the model (temperature 1) per prompt,
        best first, constraints included: exact best-first search (chargen.search)."""
        from .sampling.constraints import Automaton, Constraints
        from .sampling.search import most_likely

        if n < 1:
            raise UsageError(f"--top must be at least 1 (got {n})")
        cfg = self._config(num=n, length=length, lines=True, novel=novel, min_len=min_len, max_len=max_len,
                           ends_with=ends_with, contains=contains, regex=regex)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        automaton = self._automaton(cfg, prompts) or Automaton(Constraints(), self.vocab)
        bounded = {p: automaton.bounded(len(p) + cfg.max_length(True)) for p in prompts}
        for p in prompts:
            bounded[p].start(p, self.vocab)  # raises now if nothing can start with this prompt
        banned = self._exclude(exclude, True) or set()
        training = self.training_lines if novel else set()

        def skip(text: str) -> bool:
            return text in banned or text in training

        def results() -> Iterator["Sample"]:  # noqa: F821
            for p in prompts:
                yield from most_likely(self.stepper, self.vocab, p, n, bounded[p], skip=skip,
                                       start_state=self.checkpoint.start_state)

        return results()

    def _config(self, contains: str | Sequence[str], **fields: Any) -> SampleConfig:
        """The sample options of `samples` and `top`, checked (`contains` may be one text)."""
        cfg = SampleConfig.from_dict({**fields, "contains": [contains] if isinstance(contains, str) else list(contains)})
        if cfg.novel and self.training_lines is None:
            raise UsageError(f"{self.checkpoint.path} keeps no training lines (its corpus is not line-oriented), "
                             f"so --novel cannot be checked")
        return cfg

    def _automaton(self, cfg: SampleConfig, prompts: list[str]):
        """The constraints compiled for this vocabulary (None without any), checked for every prompt."""
        constraints = cfg.constraints()
        if not constraints:
            return None
        if not cfg.lines:
            raise UsageError(f"constraints ({', '.join(constraints.flags())}) apply to line samples only; "
                             + ("drop --no-lines" if self.line_oriented else
                                "this model writes prose: pass --lines to sample lines from it"))
        from .sampling.constraints import Automaton
        from .sampling.drawing import check_prompt, guide_for

        automaton = Automaton(constraints, self.vocab)
        for p in prompts:
            check_prompt(self.vocab, p, True)
            guide_for(automaton, self.vocab, p, cfg, True)
        return automaton

    def _exclude(self, lines: Optional[Iterable[str]], line_mode: bool) -> Optional[set[str]]:
        if lines is None:
            return None
        if not line_mode:
            raise UsageError("--exclude applies to line samples only; "
                             + ("drop --no-lines" if self.line_oriented else "this model writes prose: pass --lines"))
        return {line for line in lines}

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
             streams: Optional[int] = None) -> dict[str, float]:
        """Loss of the model on `text`: nats and bits per character, and perplexity.

        Defined as training's validation loss (chargen.evaluation): a line-oriented model (or
        lines=True) scores each line on its own, from its start-of-line state, the newline that
        ends it included, as it samples. Otherwise the text is laid out in `streams` (default 32)
        contiguous streams read in parallel with the state carried, in the checkpoint's windows.
        Characters outside the vocabulary are an error, or with `skip_unknown=True` are dropped
        and counted.
        """
        import numpy as np

        from .evaluation import EVAL_STREAMS, NumpyScorer, evaluate_text

        c = self.checkpoint.model_config
        if self.backend == "torch":
            from .training.scorer import TorchScorer  # imports torch: the torch backend only

            scorer = TorchScorer(self.stepper.model, self.stepper.device)
        else:
            scorer = NumpyScorer(self.stepper)
        start_state = self.checkpoint.start_state or [np.zeros((c.layers, c.hidden), np.float32)] * c.state_tensors
        result = evaluate_text(scorer, self.vocab, text, lines=self.line_oriented if lines is None else lines,
                               start_state=start_state, seq_len=int(self.checkpoint.train_config.get("seq_len", 128)),
                               streams=streams or EVAL_STREAMS, skip_unknown=skip_unknown)
        return result.to_dict()

    def __repr__(self) -> str:
        c = self.checkpoint.model_config
        return f"chargen.Model({self.checkpoint.path}, {c.layers}x{c.hidden} {c.cell}, vocab {c.vocab_size})"


def load(path: str | os.PathLike | None = None, *, backend: str = "auto", device: Optional[str] = None) -> Model:
    """Load a checkpoint file or run directory (its best checkpoint), or a bundled model by name
    ("names", "base"); the bundled names model by default."""
    return Model(read_checkpoint(checkpoint_path(path) if path is not None else default_checkpoint(), prefer=BEST),
                 backend=backend, device=device)


def train(corpus_paths: Sequence[str] = (), *, out: str | os.PathLike | None = None,
          val_file: Optional[str] = None, precision: str = "auto", resume: str | os.PathLike | None = None,
          start_from: str | os.PathLike | None = None, overwrite: bool = False, callbacks=None,
          **options: Any) -> Path:
    """Train on text files ('-' is stdin) and return the run directory.

    `options` are ModelConfig fields (cell, layers, hidden, embed, dropout) and TrainConfig fields
    (batch_size, seq_len, lr, max_steps, epochs, time in seconds, patience, device, ...); an
    unknown one is a ConfigError. What is left unset of the model and batch sizes is chosen from
    the corpus size, the budget and this device's measured speed (chargen.sizing), and recorded
    in config.json. `resume` continues the run in a run
    directory (or from its last.safetensors) exactly; its corpus and validation file are read
    again from the paths it recorded unless given. `callbacks` is a chargen.callbacks.TrainCallbacks.
    A run stopped by Ctrl-C or SIGTERM raises TrainingInterrupted after saving. `start_from`
    (a checkpoint, run directory, or "names" for the bundled model; "none" or None: from
    scratch) adapts that model to the corpus (chargen.finetune): its shape is kept, its
    vocabulary grows, and the training options left unset get values suited to adapting.

        >>> run_dir = chargen.train(["corpora/names.txt"], time=60, hidden=128)
    """
    require_torch("training")
    from .training.setup import train_run  # imports torch

    return train_run(corpus_paths, out=out, val_file=val_file, precision=precision, resume=resume,
                     start_from=start_from, overwrite=overwrite, callbacks=callbacks, **options)
