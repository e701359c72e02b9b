r"""Labelled corpora: each line of a list with the kind it is (a language, a kind of name).

    chargen train it.txt el.txt --labels file     each file's name without its extension labels its lines
    chargen train names.tsv --labels tab          LABEL<TAB>TEXT on every line (stdin too)

A labelled corpus is a list: it trains line by line (line mode), each line from its label's own
learned start state, so the network knows the kind before the first character. It is read whole
and checked before anything is written: a bad line is one error naming its file and line number.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

import numpy as np

from ..config import counted
from ..errors import CorpusError, UsageError
from .ingest import EncodedCorpus, check_paths, corpus_chunks, corpus_name, describe_source, source_stem, text_digest

LABEL_MODES = ("file", "tab")
MAX_LABEL_CHARS = 64
# A label per file: more distinct files than this, each with fewer lines than MIN_LINES_PER_LABEL
# on average, is taken for a mistake (a directory of documents, not of kinds).
MAX_FILE_LABELS = 1000
MIN_LINES_PER_LABEL = 5


@dataclass
class LineLabels:
    """The label of every line of a labelled corpus's text, in text order."""

    names: list[str]  # label index -> name: sorted, or a base model's labels then the new ones (sorted)
    of_line: np.ndarray  # (lines,) int32: each line's label index
    inherited: Optional[list[int]] = None  # a run from a labelled model: its labels' training lines (0 for new ones)

    @property
    def own(self) -> list[int]:
        """Lines per label in this corpus: what the model it trains samples in proportion to when
        asked for no label (chargen.checkpoint.Checkpoint.label_default)."""
        return np.bincount(self.of_line, minlength=len(self.names)).tolist()

    @property
    def counts(self) -> list[int]:
        """Lines per label, with those a labelled model it starts from had."""
        return (np.array(self.own) + np.array(self.inherited or 0)).tolist()

    def take(self, of_line: np.ndarray) -> "LineLabels":
        """The same labels for other lines."""
        return LineLabels(self.names, of_line, self.inherited)

    def after(self, base_names: list[str], base_counts: list[int]) -> "LineLabels":
        """These labels as a run from a labelled model has them: its labels first (in its order, with
        their line counts), then the new ones."""
        new = sorted(set(self.names) - set(base_names))
        names = list(base_names) + new
        index = {name: i for i, name in enumerate(names)}
        remap = np.array([index[name] for name in self.names], dtype=np.int32)
        return LineLabels(names, remap[self.of_line], list(base_counts) + [0] * len(new))


def check_label(label: str, where: str) -> str:
    """A label as given, or a one-line CorpusError saying what is wrong with it at `where`."""
    if not label:
        raise CorpusError(f"{where}: the label is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise CorpusError(f"{where}: the label {label[:20]!r}... is longer than {MAX_LABEL_CHARS} characters")
    if any("\ud800" <= c <= "\udfff" for c in label):  # (a file name's bytes that are not UTF-8)
        raise CorpusError(f"{where}: the label {label!r} is not UTF-8 text; rename the file")
    bad = [c for c in label if unicodedata.category(c)[0] in "CZ" and c != " "]
    if bad or label != label.strip():
        raise CorpusError(f"{where}: the label {label!r} holds control characters or surrounding spaces")
    if "=" in label or "," in label:
        raise CorpusError(f"{where}: the label {label!r} holds '=' or ',' (they write blends: --label a=0.7,b=0.3)")
    return label


def _file_text(path: str, stdin: Optional[BinaryIO]) -> str:
    return "".join(text if text is not None else buf.decode("ascii") for buf, text in corpus_chunks([path], stdin))


def _tab_separated(path: str, stdin: Optional[BinaryIO]) -> Iterator[tuple[str, str, str]]:
    """(label, text, where) for each LABEL<TAB>TEXT line of a file (empty lines skipped), or a
    one-line CorpusError naming the line that is not one."""
    source = describe_source(path)
    for number, line in enumerate(_file_text(path, stdin).split("\n"), 1):
        if not line:
            continue
        where = f"{source}, line {number}"
        label, tab, text = line.partition("\t")
        if not tab:
            raise CorpusError(f"{where}: no TAB; --labels tab reads LABEL<TAB>TEXT lines")
        check_label(label, where)
        if not text:
            raise CorpusError(f"{where}: the text after the label is empty")
        yield label, text, where


def _note_shared_names(paths: list[str], stems: list[str], notice: Optional[Callable[[str], None]]) -> None:
    """girls/names.txt and boys/names.txt would label their lines alike: say so (shards of one
    kind in several folders are meant to; two kinds named alike are not, and look the same)."""
    by_stem: dict[str, dict[Path, str]] = {}  # stem -> each distinct file of that name (as given)
    for path, stem in zip(paths, stems):
        by_stem.setdefault(stem, {}).setdefault(Path(path).resolve(), path)
    for stem, files in by_stem.items():
        shared = list(files.values())
        if len(shared) > 1 and notice is not None:
            notice(f"{', '.join(shared[:-1])} and {shared[-1]} {'both' if len(shared) == 2 else 'all'} label their "
                   f"lines {stem!r} (a file's name is its label): rename one to keep them apart")


def read_labelled(paths: list[str], mode: str, stdin: Optional[BinaryIO] = None,
                  notice: Optional[Callable[[str], None]] = None) -> EncodedCorpus:
    """The corpus's lines (empty ones dropped) as an EncodedCorpus of their text, with their labels.
    `notice` is told of files in different folders that share a name, so a label (--labels file)."""
    if mode not in LABEL_MODES:
        raise UsageError(f"`labels` must be one of {', '.join(LABEL_MODES)} (got {mode!r})")
    check_paths(paths)
    lines: list[str] = []
    labels: list[str] = []
    if mode == "file":
        stems = [unicodedata.normalize("NFC", source_stem(p)) for p in paths]  # (a Mac's file names are NFD)
        if "" in stems:
            nameless = "stdin" if "-" in paths else paths[stems.index("")]
            raise UsageError(f"--labels file takes each file's name as its label; {nameless} has none (use --labels tab)")
        if len(set(stems)) >= MAX_FILE_LABELS:
            raise UsageError(f"--labels file would make {len(set(stems)):,} labels, one per file; give files of one "
                             f"kind each (it.txt, el.txt), or LABEL<TAB>TEXT lines with --labels tab")
        _note_shared_names(paths, stems, notice)
        for path, stem in zip(paths, stems):
            check_label(stem, f"{describe_source(path)} (its name is its label)")
            for line in _file_text(path, stdin).split("\n"):
                if line:
                    lines.append(line)
                    labels.append(stem)
    else:
        tabbed: list[str] = []  # where the lines are whose text holds a TAB too
        for path in paths:
            for label, text, where in _tab_separated(path, stdin):
                lines.append(text)
                labels.append(label)
                if "\t" in text:
                    tabbed.append(where)
        if tabbed and notice is not None:
            notice(f"{counted(len(tabbed), 'line')} {'holds' if len(tabbed) == 1 else 'hold'} a second TAB (the first: "
                   f"{tabbed[0]}): all after the label's TAB is the text, TABs too; to keep one column: cut -f1,2")
    if not lines:
        raise CorpusError(f"{', '.join(map(describe_source, paths))} holds no labelled line")
    names = sorted(set(labels))
    if mode == "file" and len(names) > 1 and len(lines) / len(names) < MIN_LINES_PER_LABEL and \
            len(names) >= MAX_FILE_LABELS // 10:
        raise UsageError(f"{len(names):,} labels for {len(lines):,} lines: --labels file labels each file's lines "
                         f"with the file's name; did you mean to train on them unlabelled?")
    index = {name: i for i, name in enumerate(names)}
    text = "\n".join(lines) + "\n"
    corpus = EncodedCorpus.from_text(text, corpus_name(paths), [describe_source(p) for p in paths])
    corpus.labels = LineLabels(names, np.array([index[label] for label in labels], dtype=np.int32))
    corpus.digest = text_digest("".join(f"{label}\t{line}\n" for label, line in zip(labels, lines)))  # labels count
    return corpus
