"""The Python API the CLI is built on: load a checkpoint and sample, or train a model.

Nothing here prints or exits; every failure is a ChargenError.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .checkpoint import BEST, Checkpoint, read_checkpoint
from .config import SampleConfig
from .data import read_corpus
from .errors import CheckpointError, TrainingInterrupted, UsageError
from .extras import require_torch

ENV_CHECKPOINT = "CHARGEN_CHECKPOINT"
# The bundled models, by the names a user gives them (`-c base`, `--from names`): `names` is the
# default for sampling (US first names, small and fast); `base` (names of many languages and
# kinds) is what short lists are adapted from (checkpoints/README.md).
BUNDLED = {"names": "names.safetensors", "base": "base.safetensors"}
PRIMED_PROMPTS = 256  # prompts whose primed state a Model keeps


def bundled_checkpoint(name: str = "names") -> Path:
    """A bundled model: inside the installed package, or in the source tree's checkpoints/."""
    here = Path(__file__).resolve().parent
    file = BUNDLED[name]
    for candidate in (here / "_bundled" / file, here.parent / "checkpoints" / file):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"the bundled model {file} is missing from this install; pass --checkpoint")


def checkpoint_path(spec: str | os.PathLike) -> Path:
    """A checkpoint or run directory given by path, or a bundled model by its name (`names`,
    `base`) when no file of that name is here."""
    path = Path(spec)
    if str(spec) in BUNDLED and not path.exists():
        return bundled_checkpoint(str(spec))
    return path


def default_checkpoint() -> Path:
    env = os.environ.get(ENV_CHECKPOINT)
    return checkpoint_path(env) if env else bundled_checkpoint()


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
            from .device import resolve_device
            from .model import from_weights
            from .sampling import TorchStepper

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
        from .sampling import run

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
        from .sampling import Drawing, SampleStats, check_prompt, derive_key, random_seed

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
        from .sampling import prime

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
        from .constraints import Automaton, Constraints
        from .search import most_likely

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
        from .constraints import Automaton
        from .sampling import check_prompt, guide_for

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

        from .evaluation import EVAL_STREAMS, NumpyScorer, TorchScorer, evaluate_text

        c = self.checkpoint.model_config
        if self.backend == "torch":
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
    from .checkpoint import LAST, read_checkpoint
    from .config import MODEL_KEYS, PRECISIONS, ModelConfig, TrainConfig
    from .distributed import setup as setup_distributed
    from .distributed import teardown as teardown_distributed
    from .training import train as run_training

    model_options = {k: v for k, v in options.items() if k in MODEL_KEYS}
    train_options = {k: v for k, v in options.items() if k not in MODEL_KEYS}
    if model_options:  # check before reading a possibly large corpus
        ModelConfig.from_dict({"vocab_size": 1, **model_options})
    base = _base_model(start_from, resume, model_options)
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    config = TrainConfig.from_dict(train_options)
    paths = list(corpus_paths)
    out_dir = Path(out) if out is not None else None
    if resume is not None:
        ckpt = read_checkpoint(resume, prefer=LAST, with_resume=True)
        if model_options:
            raise UsageError("the model shape is fixed by the run being resumed; drop "
                             + ", ".join("--" + k for k in model_options))
        # A resumed run keeps its settings; options given now override them, and the training
        # loop refuses those that would change the data layout (batch size, window, split, seed).
        config = TrainConfig.from_dict({**ckpt.train_config, **train_options})
        out_dir = out_dir or ckpt.path.parent
        if not paths:
            sources = ckpt.info.get("sources") or []
            if not sources or "stdin" in sources:
                raise UsageError("give the corpus again: the run was trained on stdin")
            paths = list(sources)
        val_file = val_file or ckpt.info.get("val_source")
    if not paths:
        raise UsageError("no corpus given; pass one or more text files, or - for stdin")
    dist = setup_distributed(config.device)  # None unless started by torchrun
    clean = False
    try:
        corpus = _ingest(paths, dist, callbacks)
        val_text = read_corpus([val_file]).text if val_file else None
        sizing = None  # the record of the automatic sizes, when they were chosen
        if base is None and resume is None and start_from is None:
            base = _default_base(corpus, model_options, callbacks, dist)
        if base is not None:
            corpus = corpus.recoded(base.vocab.union(corpus.vocab))
            config, model_options = _finetune_options(base, corpus, config, model_options, train_options, dist,
                                                      callbacks)
        elif resume is None:
            config, model_options, sizing = _auto_size(corpus, config, model_options, train_options, precision, dist,
                                                       callbacks)
        else:
            corpus = _in_run_vocab(corpus, ckpt)
        out_dir = out_dir or Path("checkpoints") / corpus.name
        result = run_training(corpus, config, model_options, out_dir=out_dir, val_text=val_text, val_source=val_file,
                              precision=precision, resume=resume, overwrite=overwrite, callbacks=callbacks, dist=dist,
                              base=base, sizing=sizing)
        clean = True
    finally:
        teardown_distributed(dist, clean)
    if result.interrupted:
        raise TrainingInterrupted(result.interrupted, out_dir)
    return out_dir


def _base_model(start_from, resume, model_options: dict[str, Any]):
    """The checkpoint a new run starts from (None: from scratch), its shape checked against the flags."""
    if start_from is None or str(start_from) == "none":
        return None
    if resume is not None:
        raise UsageError("--from starts a new run from a model; --resume continues a run (which remembers "
                         "the model it started from): give one of them")
    from .finetune import check_architecture, resolve_base

    base = read_checkpoint(resolve_base(str(start_from)), prefer=BEST)
    check_architecture(base.model_config, model_options, base.path)
    return base


def _default_base(corpus, model_options: dict[str, Any], callbacks, dist):
    """A small list of names starts from the bundled model unless a shape or --from is given:
    adapting it beats training from scratch there (docs/benchmarks.md, issue 15)."""
    from .finetune import ARCHITECTURE, DEFAULT_FROM, DEFAULT_FROM_MAX_LINES

    if any(k in model_options for k in ARCHITECTURE) or not corpus.lines.line_oriented():
        return None
    if corpus.lines.lines > DEFAULT_FROM_MAX_LINES:
        return None
    try:
        base = read_checkpoint(bundled_checkpoint(DEFAULT_FROM), prefer=BEST)
    except CheckpointError:
        return None  # an install without the bundled model trains from scratch
    notice = _notice(callbacks, dist)
    if notice is not None:
        notice(f"a list of {corpus.lines.lines:,} lines: starting from the bundled {DEFAULT_FROM} model, which "
               f"beats training from scratch on lists up to {DEFAULT_FROM_MAX_LINES:,} lines; --from none trains "
               f"from scratch")
    return base


def _in_run_vocab(corpus, ckpt):
    """A resumed run encodes the corpus with its own vocabulary, which may hold more characters
    (a fine-tuned run keeps its base model's); a corpus with characters outside it is refused later."""
    if all(c in ckpt.vocab for c in corpus.vocab.chars):
        return corpus.recoded(ckpt.vocab)
    return corpus


def _finetune_options(base, corpus, config, model_options: dict[str, Any], train_options: dict[str, Any], dist,
                      callbacks):
    """The base model's shape, and training options suited to adapting it for those left unset."""
    from .config import TrainConfig
    from .finetune import ARCHITECTURE
    from .sizing import finetune_defaults

    auto = finetune_defaults(corpus.n_chars, set(model_options) | set(train_options))
    shape = {k: getattr(base.model_config, k) for k in ARCHITECTURE}
    notice = _notice(callbacks, dist)
    if notice is not None:
        c = base.model_config
        new = len(corpus.vocab) - len(base.vocab)
        notice(f"from {base.path}: {c.layers}x{c.hidden} {c.cell}, vocabulary {len(base.vocab)}"
               + (f" + {new} new characters" if new else "")
               + (f"; adapting: {auto.describe()} ({auto.why})" if auto.model or auto.train else ""))
    return TrainConfig.from_dict({**train_options, **auto.train}), {**shape, **auto.model, **model_options}


def _notice(callbacks, dist):
    """Where notices go: the callbacks' on_notice on rank 0, nowhere on the other ranks."""
    return callbacks.on_notice if callbacks is not None and (dist is None or dist.is_main) else None


def _ingest(paths: list[str], dist, callbacks):
    """The encoded corpus; under torchrun one process per machine encodes it, the others then map it."""
    from .ingest import ingest

    notice = _notice(callbacks, dist)
    if dist is None:
        return ingest(paths, notice=notice)
    if "-" in paths:
        raise UsageError("stdin cannot be the corpus under torchrun (each process has its own); pass files")
    corpus = ingest(paths, notice=notice) if dist.local_rank == 0 else None
    dist.barrier()
    return corpus if corpus is not None else ingest(paths)


def _auto_size(corpus, config, model_options: dict[str, Any], train_options: dict[str, Any], precision: str, dist,
               callbacks):
    """Fill what the user left unset of the sizes from the corpus, the budget and the measured
    speed of this device (chargen.sizing, chargen.probe), and say so. Returns the training
    config, the model options and the record of the choice (None: nothing was chosen)."""
    from .config import TrainConfig
    from .device import resolve_device
    from .probe import measure_rate
    from .sizing import auto_sizes

    device = dist.device if dist is not None else resolve_device(config.device)
    world = dist.world if dist is not None else 1
    given = {**train_options, **model_options}

    def measure(options, batch_size, seq_len, seconds):
        # Under torchrun each process trains its share of the batch; the slowest one sets the pace,
        # and every process must take the same decisions, so the numbers are agreed on.
        rate, spent = measure_rate(options, len(corpus.vocab), max(1, batch_size // world), seq_len, device=device,
                                   precision=precision, seconds=seconds)
        if dist is not None:
            per_char, spent = dist.max(1.0 / rate, spent)
            rate = 1.0 / per_char
        return rate * world, spent

    auto = auto_sizes(corpus.n_chars, len(corpus.vocab), time_budget=config.time_budget, max_steps=config.max_steps,
                      epochs=config.epochs, accelerator=device.type in ("cuda", "mps"), given=given, measure=measure,
                      val_fraction=config.val_fraction)
    if dist is not None and "batch_size" in auto.train:
        # --batch-size is the global batch: keep each process's share as large as one alone would use.
        auto.train["batch_size"] *= dist.world
        auto.why += f"; {dist.world} processes"
    if not (auto.model or auto.train):
        return config, model_options, None
    notice = _notice(callbacks, dist)
    if notice is not None:
        if auto.measured:
            rates = ", ".join(f"{m['shape']} {m['chars_per_sec']:,.0f}" for m in auto.measured)
            share = f" ({auto.probe_seconds / auto.time_budget:.1%} of the budget)" if auto.time_budget else ""
            notice(f"measured chars/s on {device.type}: {rates}, in {auto.probe_seconds:.1f} s{share}")
        notice(f"auto: {auto.describe()} ({auto.why}; {corpus.n_chars:,} characters); set these flags to choose "
               f"yourself")
    return TrainConfig.from_dict({**train_options, **auto.train}), {**auto.model, **model_options}, auto.record()
