"""One `chargen train`, from options to a finished run: what the training loop is handed.

Resuming reads the run's settings back; a short list starts from the bundled base model unless
told otherwise; a run from a trained model gets options suited to adapting it; the sizes left
unset are chosen from the corpus, the budget and this device's measured speed (agreed on by all
processes under torchrun). Then chargen.training.loop trains. Nothing here prints: notices go to
the callbacks' on_notice (rank 0 only).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..checkpoint import BEST, BUNDLED, LAST, bundled_checkpoint, checkpoint_path, read_checkpoint
from ..config import DEFAULT_FROM_MAX_LINES, MODEL_KEYS, PRECISIONS, ModelConfig, TrainConfig, counted, plain, unknown_keys
from ..errors import CheckpointError, ConfigError, TrainingInterrupted, UsageError
from .data import check_labelled_options, check_trainable, is_list, read_corpus, trained_by_line
from .device import resolve_device
from .distributed import setup as setup_distributed
from .distributed import teardown as teardown_distributed
from .folds import cross_validate, cross_validates, fold_count
from .finetune import ARCHITECTURE, DEFAULT_FROM, ClosestLabels, check_architecture, stand_ins
from .ingest import ingest, is_stream, text_digest
from .labels import read_labelled
from .loop import train as run_training
from .probe import measure_rate
from .rundir import RunDir, branches, check_resumable
from .sizing import auto_sizes, batch_defaults, finetune_defaults


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """train's keywords as the model's (ModelConfig) and the loop's (TrainConfig); an unknown one is
    a ConfigError naming every keyword train takes, not the loop's alone."""
    model_options = {k: v for k, v in options.items() if k in MODEL_KEYS}
    loop_options = {k: v for k, v in options.items() if k not in MODEL_KEYS}
    loop_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(loop_options) - set(loop_keys), key=str)
    if unknown:
        arguments = [name for name in inspect.signature(train_run).parameters if name != "options"]
        raise ConfigError(f"unknown option(s): {unknown_keys(unknown, [*MODEL_KEYS, *loop_keys, *arguments])}")
    return model_options, loop_options


def train_run(corpus_paths: Sequence[str] = (), *, out: str | os.PathLike | None = None,
              val_file: Optional[str] = None, precision: str = "auto", resume: str | os.PathLike | None = None,
              start_from: str | os.PathLike | None = None, overwrite: bool = False, callbacks=None,
              **options: Any) -> Path:
    """chargen.train: see its docstring there."""
    model_options, loop_options = _split_options({name: plain(value) for name, value in options.items()})
    if model_options:  # check before reading a possibly large corpus
        ModelConfig.from_dict({"vocab_size": 1, **model_options})
    base = _base_model(start_from, resume, model_options)
    if precision not in PRECISIONS:
        raise UsageError(f"`precision` must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    config = TrainConfig.from_dict(loop_options)
    paths = list(corpus_paths)
    out_dir = Path(out) if out is not None else None
    if resume is not None:
        if str(resume) in BUNDLED and not Path(resume).exists():
            raise UsageError(f"--resume continues a run of your own (its directory or its last.safetensors); {resume} "
                             f"is a bundled model, with no training state: start a new run from it with --from {resume}")
        ckpt = read_checkpoint(resume, prefer=LAST, with_resume=True)
        if model_options:
            raise UsageError("the model shape is fixed by the run being resumed; drop "
                             + ", ".join(f"`{k}`" for k in model_options))
        # A resumed run keeps its settings; options given now override them, and the training
        # loop refuses those that would change the data layout (batch size, window, split, seed).
        config = TrainConfig.from_dict({**ckpt.train_config, **loop_options})
        check_resumable(ckpt, config.to_dict())  # now, before the corpus is read (and again under the run's lock)
        out_dir = out_dir or ckpt.path.parent
        paths = paths or _sources_of_run(ckpt)
        val_file = val_file or ckpt.info.get("val_source")
    if not paths:
        raise UsageError("no corpus given; pass one or more text files, or - for stdin")
    if val_file == "-" and "-" in paths:
        raise UsageError("stdin (-) can be read once: give the corpus or --val-file as a file")
    if config.labels is not None:
        check_labelled_options(config, val_file)
    if config.val_fraction == 0 and config.patience and not val_file:
        raise UsageError("`patience` watches the held-out text, and `val_fraction` 0 holds out none: drop one")
    dist = setup_distributed(config.device)  # None unless started by torchrun
    if dist is None:
        resolve_device(config.device)  # a device that is not here: one error, before any reading or notice
    else:
        _read_by_every_process(paths + ([val_file] if val_file else []))
    clean = False
    try:
        corpus = _ingest(paths, dist, callbacks) if config.labels is None else \
            read_labelled(paths, config.labels, notice=_notice(callbacks, dist))
        val_text = read_corpus([val_file]).text if val_file else None
        if (notice := _notice(callbacks, dist)) is not None:
            _note_input(paths, val_file, val_text, corpus, config.labels is not None, notice)
        out_dir = out_dir or Path("checkpoints") / corpus.name
        RunDir(out_dir).refuse_reading_own(paths + ([val_file] if val_file else []))
        if resume is None or branches(ckpt, out_dir):  # now, not after seconds of measuring the machine (and
            run_dir = RunDir(out_dir, writes=dist is None or dist.is_main)  # again under the run's lock)
            run_dir.refuse_foreign_files()
            run_dir.refuse_early(overwrite)
        sizing = None  # the record of the automatic sizes, when they were chosen
        closest = None  # a labelled base's ClosestLabels, shared by a cross-validation's runs
        if base is None and resume is None and start_from is None:
            base = _default_base(corpus, model_options, callbacks, dist)
        if base is not None:
            corpus = corpus.recoded(base.vocab.union(corpus.vocab))
            if corpus.labels is not None and base.labels is not None:  # the base's labels stay; new ones join
                corpus.labels = corpus.labels.after(base.labels, base.label_counts)
            config, model_options, folds = _finetune_options(base, corpus, model_options, loop_options, val_file,
                                                             dist, callbacks)
            if folds:
                closest = ClosestLabels(base) if base.labels is not None else None
                config, sizing = _cross_validate(corpus, config, model_options, base, closest, precision, callbacks)
        elif resume is None:
            config, model_options, sizing = _auto_size(corpus, config, model_options, loop_options, precision, dist,
                                                       callbacks)
        else:
            corpus = _in_run_vocab(corpus, ckpt)
            inherited = ckpt.info.get("labels", {}).get("inherited")
            if corpus.labels is not None and inherited is not None:  # a run from a labelled model: its label order
                corpus.labels = corpus.labels.after(ckpt.labels, inherited)
        result = run_training(corpus, config, model_options, out_dir=out_dir, val_text=val_text, val_source=val_file,
                              precision=precision, resume=resume, overwrite=overwrite, callbacks=callbacks, dist=dist,
                              base=base, closest=closest, sizing=sizing)
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
        raise UsageError("`start_from` starts a new run from a model; `resume` continues a run (which remembers "
                         "the model it started from): give one of them")

    base = read_checkpoint(checkpoint_path(str(start_from)), prefer=BEST)
    check_architecture(base.model_config, model_options, base.path)
    return base


def _default_base(corpus, model_options: dict[str, Any], callbacks, dist):
    """A small list of names starts from the bundled model unless a shape or --from is given:
    adapting it beats training from scratch there (docs/benchmarks.md, issue 15)."""

    if any(k in model_options for k in ARCHITECTURE) or not corpus.line_stats.line_oriented():
        return None
    if corpus.line_stats.nonempty > DEFAULT_FROM_MAX_LINES:
        return None
    try:
        base = read_checkpoint(bundled_checkpoint(DEFAULT_FROM), prefer=BEST)
    except CheckpointError:
        return None  # an install without the bundled model trains from scratch
    notice = _notice(callbacks, dist)
    if notice is not None:
        notice(f"a list of {corpus.line_stats.nonempty:,} lines: starting from the bundled {DEFAULT_FROM} model, which "
               f"beats training from scratch on lists up to {DEFAULT_FROM_MAX_LINES:,} lines; --from none trains "
               f"from scratch")
    return base


def _in_run_vocab(corpus, ckpt):
    """A resumed run encodes the corpus with its own vocabulary, which may hold more characters
    (a fine-tuned run keeps its base model's); a corpus with characters outside it is refused later."""
    if all(c in ckpt.vocab for c in corpus.vocab.chars):
        return corpus.recoded(ckpt.vocab)
    return corpus


def _finetune_options(base, corpus, model_options: dict[str, Any], loop_options: dict[str, Any],
                      val_file: Optional[str], dist, callbacks):
    """The base model's shape, training options suited to adapting it for those left unset, and
    whether the run's length is to be chosen by cross-validation (chargen.training.folds)."""

    auto = finetune_defaults(corpus.n_chars, corpus.line_stats.nonempty if is_list(corpus, loop_options.get("line_mode"))
                             else None,
                             {**model_options, **loop_options})
    folds = cross_validates(corpus, loop_options, val_file, dist is not None)
    if folds:  # the held-out lines and the stopping they are for give way to the folds
        auto.train = {k: v for k, v in auto.train.items() if k not in ("val_fraction", "patience")}
        auto.why = "adapting a trained model, for as many steps as cross-validation finds best"
    config = TrainConfig.from_dict({**loop_options, **auto.train})
    shape = {k: getattr(base.model_config, k) for k in ARCHITECTURE}
    notice = _notice(callbacks, dist)
    if notice is not None:
        c = base.model_config
        new = len(corpus.vocab) - len(base.vocab)
        copies = len(stand_ins(base.vocab, corpus.vocab))
        notice(f"from {base.path}: {c.layers}x{c.hidden} {c.cell}, vocabulary {len(base.vocab)}"
               + (f" + {counted(new, 'new character')}" if new else "")
               + (f" ({copies} start" + ("s a copy of a letter" if copies == 1 else " as copies of letters") + " it knows)"
                  if copies else "")
               + (f"; adapting: {auto.describe()} ({auto.why})" if auto.model or auto.train else ""))
    return config, {**shape, **auto.model, **model_options}, folds


def _cross_validate(corpus, config, model_options: dict[str, Any], base, closest, precision: str, callbacks):
    """The run's length chosen by k-fold cross-validation on the list (chargen.training.folds): the
    config that trains every line that long, holding none out, and the record of the choice."""
    notice = _notice(callbacks, None)
    n = corpus.line_stats.nonempty
    if notice is not None:
        notice(f"a list of {n:,} lines: choosing how many steps to adapt by "
               f"{fold_count(n)}-fold cross-validation (each line held out once)")
    cv = cross_validate(corpus, config, model_options, base=base, closest=closest, precision=precision, train=run_training,
                        callbacks=callbacks)
    if notice is not None:
        notice(cv.plan(n))
    record = cv.record()
    return TrainConfig.from_dict({**config.to_dict(), **record["chosen"], "patience": None}), record


def _sources_of_run(ckpt) -> list[str]:
    """The corpus files a resumed run was trained on, where they can be read again."""
    sources = ckpt.info.get("sources") or []
    if not sources or "stdin" in sources:
        raise UsageError("give the corpus again: the run was trained on stdin")
    piped = [s for s in sources if is_stream(s)]
    if piped:
        raise UsageError(f"give the corpus again: the run was trained on a pipe ({piped[0]})")
    return list(sources)


def _note_input(paths: list[str], val_file: Optional[str], val_text: Optional[str], corpus, labelled: bool,
                notice: Callable[[str], None]) -> None:
    """Say where the run would see text twice: a corpus file given again (`chargen train *.txt
    data/*.txt`: it is trained on twice, and a list's held-out lines have copies in training), or
    a validation file that is text the run trains on; and, unlabelled, what its files' first lines
    say it would learn that its writer may not mean (_note_line_shapes)."""
    files = [p for p in paths if p != "-" and os.path.isfile(p)]
    again = _given_twice(files)
    if again is not None:
        notice(f"{again} is given twice: its text is trained on twice, and held-out lines may have copies in "
               f"training; give each file once (or mean it, to weigh it double)")
    if val_text is not None and _trains_on(files, val_file, val_text, corpus):
        notice(f"--val-file {val_file} is text the run trains on: its loss cannot show overfitting, so the best "
               f"checkpoint and early stopping follow the training loss; hold out text the run does not see")
    if not labelled:
        _note_line_shapes(paths, corpus.line_stats.line_oriented(), notice)


COLUMN_SEPARATORS = {".csv": ",", ".tsv": "\t"}  # a table's file name says how its columns are cut
FIRST_BYTES = 1 << 16  # what of a file says how its lines are written


def _note_line_shapes(paths: list[str], a_list: bool, notice: Callable[[str], None]) -> None:
    """What the first lines of a corpus file say it teaches that its writer may not mean: a .csv or
    .tsv whose lines nearly all hold its separator (`Mary,F,7065`, as the US baby-name files have
    them) is learnt whole, columns and all; a list whose lines mostly start or end in spaces (a
    spreadsheet's cells) gives samples that do too. One note each, with the command that mends it."""
    said = set()
    for path in paths:
        sep = COLUMN_SEPARATORS.get(Path(path).suffix.lower())
        if not (sep or a_list):  # (prose that is not a table: nothing to look for, nothing to read)
            continue
        lines = _first_lines(path)
        if len(lines) < 2:
            continue
        one = Path(path).with_suffix(".txt").name if Path(path).suffix != ".txt" else f"{Path(path).stem}-fixed.txt"
        if "columns" not in said and sep and sum(sep in line for line in lines) >= 0.9 * len(lines):
            said.add("columns")
            cut = "cut -d, -f1" if sep == "," else "cut -f1"
            labels = "" if sep == "," else " (--labels tab reads LABEL<TAB>TEXT lines)"
            notice(f"{path}'s lines hold {'commas' if sep == ',' else 'TABs'}: each whole line, all its columns, is "
                   f"a line to learn; to learn one column: {cut} {path} > {one}, then chargen train {one}{labels}")
        if "spaces" not in said and a_list and sum(line != line.strip() for line in lines) >= 0.5 * len(lines):
            said.add("spaces")
            notice(f"most of {path}'s lines start or end in spaces, and so will the samples; to strip them: "
                   f"sed 's/^[[:space:]]*//; s/[[:space:]]*$//' {path} > {one}")


def _first_lines(path: str) -> list[str]:
    """The non-empty lines of a regular file's first FIRST_BYTES (the last, maybe cut, left out)."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        head = f.read(FIRST_BYTES)
    lines = head.decode("utf-8", "replace").splitlines()
    return [line for line in (lines if len(head) < FIRST_BYTES else lines[:-1]) if line]


def _given_twice(files: list[str]) -> Optional[str]:
    """The first of `files` that names a file named before it (by device and inode: a stat a file,
    where samefile on each pair would be thousands of files squared), or None."""
    seen: set[tuple[int, int]] = set()
    for path in files:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            return path
        seen.add((st.st_dev, st.st_ino))
    return None


def _trains_on(files: list[str], val_file: str, val_text: str, corpus) -> bool:
    """Whether the validation file is one of the corpus files, or holds the very text trained on."""
    same_file = val_file != "-" and os.path.isfile(val_file) and any(os.path.samefile(p, val_file) for p in files)
    return same_file or text_digest(val_text) == corpus.digest


def _notice(callbacks, dist):
    """Where notices go: the callbacks' on_notice on rank 0, nowhere on the other ranks."""
    return callbacks.on_notice if callbacks is not None and (dist is None or dist.is_main) else None


def _read_by_every_process(paths: list[str]) -> None:
    """Under torchrun every process reads the corpus (or maps what its machine's first encoded) and
    the validation file: stdin and pipes, which one process reads once, are refused."""
    for path in paths:
        if path == "-":
            raise UsageError("stdin cannot be the corpus under torchrun (each process has its own); pass files")
        if is_stream(path):
            raise UsageError(f"{path} is a pipe, which one process can read once; under torchrun every process "
                             f"reads the corpus: pass files")


def _ingest(paths: list[str], dist, callbacks):
    """The encoded corpus; under torchrun one process per machine encodes it, the others then map it."""

    notice = _notice(callbacks, dist)
    if dist is None:
        return ingest(paths, notice=notice)
    corpus = ingest(paths, notice=notice) if dist.local_rank == 0 else None
    dist.barrier()
    return corpus if corpus is not None else ingest(paths)


def _auto_size(corpus, config, model_options: dict[str, Any], loop_options: dict[str, Any], precision: str, dist,
               callbacks):
    """Fill what the user left unset of the sizes from the corpus, the budget and the measured
    speed of this device (chargen.training.sizing, chargen.training.probe), and say so. Returns the training
    config, the model options and the record of the choice (None: nothing was chosen)."""

    device = dist.device if dist is not None else resolve_device(config.device)
    world = dist.world if dist is not None else 1
    given = {**loop_options, **model_options}
    by_line, accelerator = trained_by_line(corpus, config), device.type in ("cuda", "mps")
    if not by_line:  # a corpus too short for any window: its error now, not after measuring the machine
        seq_len = given.get("seq_len", batch_defaults(corpus.n_chars, accelerator)["seq_len"])
        check_trainable(corpus.n_chars, seq_len, 1, ", ".join(corpus.sources),
                        one_line=corpus.line_stats.nonempty <= 1, part="it")

    started = False

    def measure(options, batch_size, seq_len, seconds):
        nonlocal started
        if not started:  # what a process pays once on a device (on a GPU the CUDA context, cuDNN and
            # cuBLAS: 5 s on an H200, which made its first shape look 30x slower than it trains)
            # belongs to no shape: a tiny step pays it before the first is timed
            measure_rate({"layers": 1, "hidden": 8, "embed": 4}, len(corpus.vocab), 2, 4, device=device,
                         precision=precision, seconds=0.0)
            started = True
        # Under torchrun each process trains its share of the batch; the slowest one sets the pace,
        # and every process must take the same decisions, so the numbers are agreed on.
        rate, spent = measure_rate(options, len(corpus.vocab), max(1, batch_size // world), seq_len, device=device,
                                   precision=precision, seconds=seconds)
        if dist is not None:
            per_char, spent = dist.max(1.0 / rate, spent)
            rate = 1.0 / per_char
        return rate * world, spent

    auto = auto_sizes(corpus.n_chars, len(corpus.vocab), time_budget=config.time_budget, max_steps=config.max_steps,
                      epochs=config.epochs, accelerator=accelerator, given=given, measure=measure,
                      val_fraction=config.val_fraction, by_line=by_line,
                      n_labels=len(corpus.labels.names) if corpus.labels is not None else 0)
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
    return TrainConfig.from_dict({**loop_options, **auto.train}), {**auto.model, **model_options}, auto.record()
