"""The Python API the CLI is built on: load a checkpoint and sample, or train a model.

Nothing here prints or exits; every failure is a ChargenError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .checkpoint import BEST, Checkpoint, read_checkpoint
from .config import SampleConfig
from .errors import CheckpointError, UsageError

ENV_CHECKPOINT = "CHARGEN_CHECKPOINT"
BUNDLED_NAME = "names.safetensors"


def bundled_checkpoint() -> Path:
    """The pretrained names model: inside the installed package, or in the source tree's checkpoints/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_bundled" / BUNDLED_NAME, here.parent / "checkpoints" / BUNDLED_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"the bundled model {BUNDLED_NAME} is missing from this install; pass --checkpoint")


def default_checkpoint() -> Path:
    env = os.environ.get(ENV_CHECKPOINT)
    return Path(env) if env else bundled_checkpoint()


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
            from .model import CharRNN
            from .sampling import TorchStepper
            from .training import load_weights, resolve_device

            model = CharRNN(checkpoint.model_config)
            load_weights(model, checkpoint.weights)
            dev = resolve_device(device or "auto")
            self.stepper = TorchStepper(model.to(dev), dev)
        self._training_lines: Optional[set[str]] = None

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
        on_char=None,
    ) -> Iterator["Sample"]:  # noqa: F821
        """Yield `n` Sample objects (text, prompt, logprob) per prompt, in order."""
        from .sampling import derive_key, generate, random_seed

        line_mode = self.line_oriented if lines is None else lines
        cfg = SampleConfig(num=n, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, lines=line_mode, unique=unique, novel=novel)
        cfg.validate()
        if novel and self.training_lines is None:
            raise UsageError(f"{self.checkpoint.path} keeps no training lines (its corpus is not line-oriented), "
                             f"so --novel cannot be checked")
        base_seed = random_seed() if seed is None else seed
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seen: set[str] = set()
        for j, p in enumerate(prompts):
            key = derive_key(base_seed, j)
            yield from generate(self.stepper, self.vocab, p, cfg, lines=line_mode, key=key, seen=seen,
                                training_lines=self.training_lines if novel else None, on_char=on_char,
                                start_state=self.checkpoint.start_state)

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
             streams: int = 64) -> dict[str, float]:
        """Loss of the model on `text`: nats and bits per character, and perplexity.

        A line-oriented model (or lines=True) scores each line on its own, from its start-of-line
        state, the newline that ends it included: as it samples, and as training validates it.
        Otherwise the text is laid out in `streams` contiguous streams read in parallel with the
        state carried, as in training. Characters outside the vocabulary are an error, or with
        `skip_unknown=True` are dropped and counted.
        """
        import math

        import numpy as np

        from .data import line_ids
        from .sampling import initial_state, log_softmax

        unknown = self.vocab.count_unknown(text) if skip_unknown else 0
        ids = self.vocab.encode(text, skip_unknown=skip_unknown).astype(np.int64)
        if len(ids) < 1:
            raise UsageError("the text is too short to evaluate: it holds no known character")
        # Context for the first character: the start of a line, as when sampling.
        start = self.vocab.index.get("\n", self.vocab.index.get(" ", 0))
        line_mode = (self.line_oriented if lines is None else lines) and "\n" in self.vocab
        if line_mode:
            rows = line_ids(self.vocab, self.vocab.decode(ids))
            if not rows:
                raise UsageError("the text holds no non-empty line to evaluate")
            count = sum(len(r) for r in rows)
            width = max(len(r) for r in rows)
            targets = np.full((len(rows), width), -1, dtype=np.int64)
            for i, r in enumerate(rows):
                targets[i, : len(r)] = r
            inputs = np.concatenate([np.full((len(rows), 1), start), np.maximum(targets[:, :-1], 0)], axis=1)
        else:
            ids = np.concatenate([[start], ids])
            count = len(ids) - 1  # every character after the start-of-line context
            n_streams = max(1, min(streams, count // 64))
            length = -(-count // n_streams)  # ceil: the last stream is padded and its padding masked
            padded = np.full(n_streams * length + 1, start, dtype=np.int64)
            padded[: len(ids)] = ids
            inputs = padded[:-1].reshape(n_streams, length)  # (B, L)
            targets = padded[1:].reshape(n_streams, length)
            targets = np.where((np.arange(n_streams * length) < count).reshape(n_streams, length), targets, -1)
        total = 0.0
        start_state = initial_state(self.stepper, self.checkpoint.start_state)
        for r0 in range(0, len(inputs), 4096):  # bounded memory however many lines there are
            x, y = inputs[r0 : r0 + 4096], targets[r0 : r0 + 4096]
            state = self.stepper.repeat(start_state, len(x))
            for t in range(x.shape[1]):
                logits, state = self.stepper.step(x[:, t], state)
                real = y[:, t] >= 0
                nll = -np.take_along_axis(log_softmax(logits), np.maximum(y[:, t], 0)[:, None], axis=-1)[:, 0]
                total += float(nll[real].sum())
        loss = total / count
        return {"loss": loss, "bpc": loss / math.log(2), "perplexity": math.exp(loss), "chars": count,
                "skipped": unknown}

    def __repr__(self) -> str:
        c = self.checkpoint.model_config
        return f"chargen.Model({self.checkpoint.path}, {c.layers}x{c.hidden} {c.cell}, vocab {c.vocab_size})"


def load(path: str | os.PathLike | None = None, *, backend: str = "auto", device: Optional[str] = None) -> Model:
    """Load a checkpoint file or run directory (its best checkpoint); the bundled names model by default."""
    return Model(read_checkpoint(path if path is not None else default_checkpoint(), prefer=BEST),
                 backend=backend, device=device)


def train(corpus_paths: Sequence[str] = (), *, out: str | os.PathLike | None = None,
          val_file: Optional[str] = None, precision: str = "auto", resume: str | os.PathLike | None = None,
          overwrite: bool = False, callbacks=None, **options: Any) -> Path:
    """Train on text files ('-' is stdin) and return the run directory.

    `options` are ModelConfig fields (cell, layers, hidden, embed, dropout) and TrainConfig fields
    (batch_size, seq_len, lr, max_steps, epochs, time in seconds, patience, device, ...); an
    unknown one is a ConfigError. `resume` continues the run in a run directory (or from its
    last.safetensors) exactly; its corpus and validation file are read again from the paths it
    recorded unless given. `callbacks` is a chargen.training.TrainCallbacks. A run stopped by
    Ctrl-C or SIGTERM raises TrainingInterrupted after saving.

        >>> run_dir = chargen.train(["corpora/names.txt"], time=60, hidden=128)
    """
    from .checkpoint import LAST, read_checkpoint
    from .config import MODEL_KEYS, PRECISIONS, ModelConfig, TrainConfig
    from .distributed import setup as setup_distributed
    from .distributed import teardown as teardown_distributed

    model_options = {k: v for k, v in options.items() if k in MODEL_KEYS}
    train_options = {k: v for k, v in options.items() if k not in MODEL_KEYS}
    if model_options:  # check before reading a possibly large corpus
        ModelConfig.from_dict({"vocab_size": 1, **model_options})
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
    try:
        return _train(paths, config, model_options, train_options, out_dir, val_file, precision, resume, overwrite,
                      callbacks, dist)
    finally:
        teardown_distributed(dist)


def _train(paths, config, model_options, train_options, out_dir, val_file, precision, resume, overwrite, callbacks,
           dist):
    from .config import TrainConfig
    from .data import read_corpus
    from .errors import TrainingInterrupted
    from .ingest import ingest
    from .training import auto_settings, resolve_device
    from .training import train as run_training

    notice = callbacks.on_notice if callbacks is not None and (dist is None or dist.is_main) else None
    if dist is None:
        corpus = ingest(paths, notice=notice)
    else:
        if "-" in paths:
            raise UsageError("stdin cannot be the corpus under torchrun (each process has its own); pass files")
        # One process per machine encodes the corpus into the cache; the others then map it.
        if dist.local_rank == 0:
            corpus = ingest(paths, notice=notice)
        dist.barrier()
        if dist.local_rank != 0:
            corpus = ingest(paths)
    val_text = read_corpus([val_file]).text if val_file else None
    if resume is None:
        # What the user left unset is sized from the corpus and the time budget, and said so.
        device = dist.device if dist is not None else resolve_device(config.device)
        auto_model, auto_train, why = auto_settings(corpus.n_chars, config.time, device,
                                                    set(model_options) | set(train_options))
        if dist is not None and "batch_size" in auto_train:
            # --batch-size is the global batch: keep each process's share as large as one alone would use.
            auto_train["batch_size"] *= dist.world
            why += f"; {dist.world} processes"
        if auto_model or auto_train:
            model_options = {**auto_model, **model_options}
            config = TrainConfig.from_dict({**train_options, **auto_train})
            picked = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in {**auto_model, **auto_train}.items())
            if notice is not None:
                notice(f"auto: {picked} ({why}; {corpus.n_chars:,} characters); set these flags to choose yourself")
    out_dir = out_dir or Path("checkpoints") / corpus.name
    result = run_training(corpus, config, model_options, out_dir=out_dir, val_text=val_text, val_source=val_file,
                          precision=precision, resume=resume, overwrite=overwrite, callbacks=callbacks, dist=dist)
    if result.interrupted:
        raise TrainingInterrupted(result.interrupted, out_dir)
    return out_dir
