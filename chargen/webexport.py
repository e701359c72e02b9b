"""A checkpoint as one dependency-free JavaScript module, or one self-contained web page.

The module is `const MODEL = {...}` (the weights, the vocabulary, the sampling defaults read from
chargen.config's declarations) followed by `static/websampler.js`, chargen's sampler ported to
JavaScript, and an `export` line. The page holds the same code, run in a Web Worker, and loads
nothing from the network.

Weights are stored in one of three encodings:

    f32    as trained: the samples for a seed are exactly `chargen sample`'s.
    f16    half the size; the logits move by ~1e-3, so now and then a draw differs.
    i8     a quarter: each row of a weight matrix, and each label's and layer's start state, is
           round(w / s) * s with its own scale s = max |w_row| / 127 (biases stay f32). Where a
           checkpoint's weights already lie on that grid (the bundled models' do), i8 is lossless:
           same seed, same names.

`auto` takes i8 when it is lossless or moves the checkpoint's loss on its own lines by less than
I8_TOLERANCE nats, else f16; where the weights lie on the grid and the start state does not, it
keeps the start state f32, and the export lossless. `--checkpoint` writes the checkpoint with the
exported weights, so that `chargen sample` draws what the page draws.
"""

from __future__ import annotations

import base64
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import Checkpoint, checkpoint_name, encode_lines, save_checkpoint
from .config import DEFAULT_LINE_LENGTH, DEFAULT_PROSE_LENGTH, MAX_LENGTH, SampleConfig, declared
from .errors import UsageError
from .sampling.constraints import MAX_STATES
from .sampling.drawing import CONSTRAINED_TRIES
from .sampling.labels import CUTOFFS, FILLERS, KINDS, LANGUAGES, PEOPLE, TERRITORIES, label_asks, label_summary
from .sampling.prefixes import PREFIX_DEPTH, PREFIX_MEMORY
from .sampling.search import BEHIND, DROP, SEARCH_CACHE, SEARCH_MEMORY
from .sampling.tree import FOUND_KEPT, TREE_MEMORY, node_bytes, round_width
from .wasmkernel import kernel

ENCODINGS = ("auto", "i8", "f16", "f32")
I8_TOLERANCE = 0.005  # nats per character the loss may move for `auto` to choose i8
LOSS_LINES = 2000  # of the checkpoint's lines, scored to measure what quantising costs
NOVEL_BUDGET = 128 * 1024  # bytes of training lines an export carries for `novel`; beyond, left out
# The sampling options an export takes (chargen.config.SampleConfig fields); the others, and why not.
EXPORTED = ("num", "temperature", "top_k", "top_p", "seed", "lines", "length", "unique", "novel", "exclude",
            "min_len", "max_len", "ends_with", "contains", "regex", "rejection", "label")
NOT_EXPORTED = {
    "guided": "is not in an exported model: its constraints are always exact",
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --- the weights ------------------------------------------------------------------------------


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<f4")


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) float32 -> (int8 (R, C), float32 scales (R,)) with w ~ q * scale row by row. Where w is
    already on such a grid, the scale that reproduces it exactly is found (a neighbour of
    max|w|/127 in float32, which rounds)."""
    w = np.asarray(w, dtype=np.float32)
    base = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    base[base == 0] = np.float32(1)
    best_q, best_s = None, None
    for cand in (base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(0))):
        q = np.clip(np.rint(w / cand[:, None]), -127, 127).astype(np.int8)
        exact = ((q.astype(np.float32) * cand[:, None]) == w).all(axis=1)
        if best_q is None:
            best_q, best_s = q.copy(), cand.copy()
        else:
            best_q[exact], best_s[exact] = q[exact], cand[exact]
    return best_q, best_s


def encode(weights: dict[str, np.ndarray], enc: str) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The weights as the module holds them ({name: {shape, enc, data[, scale]}}, as_text) and the
    float32 values the module computes with."""
    stored, values = {}, {}
    for name, w in weights.items():
        w = _f32(w)
        entry: dict = {"shape": list(w.shape)}
        if enc == "i8" and w.ndim == 2:
            q, s = quantize_rows(w)
            entry.update(enc="i8", data=_text(q), scale=_text(_f32(s)))
            values[name] = (q.astype(np.float32) * s[:, None]).astype(np.float32)
        elif enc == "f16" and w.ndim == 2:
            h = w.astype("<f2")
            entry.update(enc="f16", data=_text(h))
            values[name] = h.astype(np.float32)
        else:  # biases, and every weight under f32
            entry.update(enc="f32", data=_text(w))
            values[name] = w
        stored[name] = entry
    return stored, values


def as_text(data: bytes) -> str:
    """Bytes as an export holds them: Base85 (RFC 1924's alphabet, as base64.b85encode writes it: 5
    characters for 4 bytes, the last group shorter, where base64 takes 5.33), its "<" written "." so
    that the text never needs escaping in a page (a "<" in the page's data is written "\\u003c", six
    bytes). websampler.js's bytesOf reads it."""
    return base64.b85encode(data).decode("ascii").replace("<", ".")


def _text(a: np.ndarray) -> str:
    return as_text(np.ascontiguousarray(a).tobytes())


def _weights(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The weights an export holds: all but a line-mode model's `start`, its start state, which the
    module carries as such (_starts)."""
    return {k: w for k, w in ckpt.weights.items() if k != "start"}


def _starts(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The start state's tensors as `start_state.<j>`, each as rows of H values (one per label and
    layer), so that every row gets its own int8 scale."""
    return {f"start_state.{j}": s.reshape(-1, s.shape[-1]) for j, s in enumerate(ckpt.start_state or [])}


def encoded(ckpt: Checkpoint, enc: str, start_enc: Optional[str] = None
            ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """encode() of the weights under `enc` and of the start state's rows under `start_enc` (default `enc`)."""
    stored, values = encode(_weights(ckpt), enc)
    stored_start, start_values = encode(_starts(ckpt), start_enc or enc)
    return {**stored, **stored_start}, {**values, **start_values}


def exported(ckpt: Checkpoint, enc: str, start_enc: Optional[str] = None
             ) -> tuple[dict[str, np.ndarray], Optional[list[np.ndarray]]]:
    """The weights and the start state an export computes with, float32 in the checkpoint's shapes
    (its `start` weight, where it has one, is its start state stacked)."""
    _, values = encoded(ckpt, enc, start_enc)
    start = [values.pop(f"start_state.{j}").reshape(s.shape) for j, s in enumerate(ckpt.start_state or [])] or None
    if "start" in ckpt.weights and start is not None:
        values["start"] = np.stack(start, axis=1 if ckpt.labels else 0)
    return values, start


def lossless(tensors: dict[str, np.ndarray], enc: str) -> bool:
    if enc == "f32":
        return True
    _, values = encode(tensors, enc)
    return all(np.array_equal(values[k], _f32(tensors[k])) for k in tensors)


def line_loss(ckpt: Checkpoint, enc: Optional[str] = None) -> Optional[float]:
    """The line loss of up to LOSS_LINES of the checkpoint's own lines (a seeded sample) as trained
    (enc None) or as exported under `enc`; None for a checkpoint that holds no lines."""
    from .evaluation import NumpyScorer, evaluate_text, label_line_sums
    from .npmodel import NumpyCharRNN

    if not ckpt.training_lines or "\n" not in ckpt.vocab:
        return None
    weights, start_state = (ckpt.weights, ckpt.start_state) if enc is None else exported(ckpt, enc)
    lines = list(ckpt.training_lines)
    random.Random(0).shuffle(lines)
    scorer = NumpyScorer(NumpyCharRNN(ckpt.model_config, weights))
    if ckpt.labels is None:
        return evaluate_text(scorer, ckpt.vocab, "\n".join(lines[:LOSS_LINES]) + "\n", lines=True,
                             start_state=start_state, seq_len=1, skip_unknown=True).loss
    # A labelled model keeps its lines as sampling.labels.line_key writes them, "LABEL<TAB>line":
    # each line under its own label.
    index = {name: k for k, name in enumerate(ckpt.labels)}
    pairs = [line.split("\t", 1) for line in lines[:LOSS_LINES]]
    known = [(index[label], ckpt.vocab.encode(text + "\n")) for label, text in pairs  # each ends with its newline
             if label in index and not ckpt.vocab.unknown_chars(text)]
    totals, counts = label_line_sums(scorer, [ids for _, ids in known], np.array([k for k, _ in known]),
                                     start_state, ckpt.vocab.index["\n"], len(ckpt.labels))
    return float(totals.sum() / counts.sum())


@dataclass
class Encoding:
    """The encoding chosen for an export, and what it costs."""

    enc: str
    lossless: bool  # the exported weights are the checkpoint's: same seed, same samples
    loss: Optional[float] = None  # line loss of the checkpoint's lines, as trained
    loss_exported: Optional[float] = None  # ... with the exported weights
    # The start state's encoding where it is not `enc`: f32 when the weights are on enc's grid and the
    # start state is not, which keeps the export lossless.
    start: Optional[str] = None

    def describe(self) -> str:
        names = {"i8": "int8 with a scale per row", "f16": "float16", "f32": "float32"}
        what = names[self.enc] + (f" (the start state {names[self.start]})" if self.start not in (None, self.enc) else "")
        if self.lossless:
            return f"weights {what}, exactly the checkpoint's: same seed, same samples as `chargen sample`"
        moved = (f"; line loss {self.loss:.4f} -> {self.loss_exported:.4f} nats/char on the checkpoint's lines"
                 if self.loss is not None else "")
        return (f"weights {what}{moved}; a sample for a seed can differ from `chargen sample`'s now and then "
                f"(write the exported weights as a checkpoint with --checkpoint to sample exactly these)")


def check_encoding(requested: str) -> None:
    """An encoding --weights may name (checked before an export writes anything)."""
    if requested not in ENCODINGS:
        raise UsageError(f"--weights must be one of {', '.join(ENCODINGS)} (got {requested!r})")


def choose_encoding(ckpt: Checkpoint, requested: str = "auto") -> Encoding:
    """The encoding asked for (auto: a lossless one, else i8 within I8_TOLERANCE, else f16), and
    what it costs on the checkpoint's own lines."""
    check_encoding(requested)
    candidates = ("i8", "f16") if requested == "auto" else (requested,)
    for enc in candidates:
        if lossless(_weights(ckpt), enc):
            if lossless(_starts(ckpt), enc):
                return Encoding(enc, True)
            if requested == "auto":  # a start state off the grid stays float32: still lossless
                return Encoding(enc, True, start="f32")
    base = line_loss(ckpt)  # measured once, for every candidate

    def measured(enc: str) -> Encoding:
        return Encoding(enc, False, base, line_loss(ckpt, enc) if base is not None else None)

    if requested != "auto":
        return measured(requested)
    i8 = measured("i8")
    return i8 if base is not None and i8.loss_exported - base < I8_TOLERANCE else measured("f16")


# --- the module and the page ------------------------------------------------------------------


def _defaults(labelled: bool) -> dict:
    """The exported options' defaults, camelCase, from chargen.config's declarations (`label` for a
    labelled model only)."""
    fields = declared(SampleConfig)
    out = {"prompt": ""}
    out.update({camel(fields[name].field): getattr(SampleConfig(), name) for name in EXPORTED
                if name != "label" or labelled})
    return out


def _not_exported(labelled: bool) -> dict:
    return NOT_EXPORTED if labelled else {**NOT_EXPORTED, "label": "needs a labelled model; this one has no labels"}


MAX_SHARED = 42  # leading characters a front-coded line says it shares with the line before: "0" to "Z"


def front_coded(lines: list[str]) -> str:
    """Training lines as an export carries them for `novel` (a third smaller for names): distinct,
    sorted, each after one character, chr(48 + k), saying that it starts with the first k
    characters of the line before (k at most MAX_SHARED, and only characters of Unicode's Basic
    Multilingual Plane shared, so that k counts the same in Python and in JavaScript's UTF-16
    strings). websampler.js's decodeLines reads them."""
    out, prev = [], ""
    for line in sorted(set(lines)):
        k, most = 0, min(len(prev), len(line), MAX_SHARED)
        while k < most and prev[k] == line[k] and ord(line[k]) < 0x10000:
            k += 1
        out.append(chr(48 + k) + line[k:])
        prev = line
    return "\n".join(out)


def model_data(ckpt: Checkpoint, encoding: Encoding) -> dict:
    stored, _ = encoded(ckpt, encoding.enc, encoding.start)
    start_state = [stored.pop(f"start_state.{j}") for j in range(len(ckpt.start_state or []))] or None
    coded = front_coded(ckpt.training_lines) if ckpt.training_lines is not None else None
    lines_bytes = len(coded.encode("utf-8")) if coded else 0
    keep_lines = coded is not None and lines_bytes <= NOVEL_BUDGET
    facts = ckpt.public_facts()
    cfg = ckpt.model_config
    tree_node_bytes = node_bytes(cfg.vocab_size, cfg.layers * cfg.state_tensors * cfg.hidden)
    fields = declared(SampleConfig)
    facts["export"] = {"weights": encoding.enc, "lossless": encoding.lossless, "loss": encoding.loss,
                       "loss_exported": encoding.loss_exported, "novel": keep_lines}
    return {
        "config": ckpt.model_config.to_dict(),
        "vocab": ckpt.vocab.chars,
        "line_oriented": ckpt.line_oriented,
        "weights": stored,
        "start_state": start_state,  # each (labels x layers, H) or (layers, H)
        "training_lines": coded if keep_lines else None,
        "training_lines_note": None if keep_lines else (
            f"`novel` is not in this export: the model's {len(ckpt.training_lines or []):,} training lines "
            f"({lines_bytes / 1024:,.0f} KB) are over the {NOVEL_BUDGET // 1024} KB an export carries"
            if ckpt.training_lines else "`novel` needs the training lines, and this model has none"),
        "labels": {"names": ckpt.labels, "counts": ckpt.label_counts,
                   "asks": label_asks(ckpt.labels, ckpt.own_labels),  # the label field's suggestions
                   "summary": label_summary(ckpt.labels),  # what an unknown label's error shows
                   "tables": {"languages": LANGUAGES, "territories": TERRITORIES, "kinds": KINDS,  # what a term's words can name
                              "fillers": FILLERS, "people": PEOPLE, "cutoffs": CUTOFFS},
                   **({"default": ckpt.label_default} if ckpt.own_labels else {})}  # with no label: an adapted model's own
        if ckpt.labels else None,
        "defaults": _defaults(bool(ckpt.labels)),
        "not_exported": _not_exported(bool(ckpt.labels)),
        "line_length": DEFAULT_LINE_LENGTH,
        "max_length": MAX_LENGTH,  # the longest `length` (as chargen refuses longer)
        "prose_length": DEFAULT_PROSE_LENGTH,
        "max_tries": SampleConfig().max_tries,
        "constrained_tries": CONSTRAINED_TRIES,
        "max_batch": round_width(tree_node_bytes),  # the adaptive sampler's rounds (a seed's samples depend on it)
        "max_states": MAX_STATES,  # the most automaton states constraints may need
        # A tree keeps node_cap(V, S, memory) nodes (a blend's: its labels' roots share them, chargen.sampling.tree).
        "tree_memory": TREE_MEMORY,
        # Trees kept between calls without a seed (chargen.sampling.tree.WarmTrees): one tree's worth in a
        # page, not WARM_MEMORY's two (a JavaScript node of the base model takes ~3x what chargen counts
        # for it; seeded calls, and so the CLI's names, do not depend on this).
        "warm_memory": TREE_MEMORY,
        "found_kept": FOUND_KEPT,  # distinct accepted samples a tree remembers for Z's lower bound
        # Plain draws step each prefix once (chargen.sampling.prefixes): this much memory, this deep.
        "prefix_memory": PREFIX_MEMORY,
        "prefix_depth": PREFIX_DEPTH,
        "tree_node_bytes": tree_node_bytes,
        # `top`: the options it refuses (camelCase), and chargen.sampling.search's labels a prefix drops (below
        # its mixture, below the floor),
        # memory for its prefixes and cache of their states
        "top_refused": [camel(fields[name].field) for name in EXPORTED if not fields[name].takes("top")],
        "search_drop": DROP,
        "search_behind": BEHIND,
        "search_memory": SEARCH_MEMORY,
        "search_cache": SEARCH_CACHE,
        "info": facts,
    }


def _static(name: str) -> str:
    return resources.files("chargen").joinpath("static", name).read_text(encoding="utf-8")


def _script(name: str) -> str:
    """One of static/'s scripts as an export carries it: without its comments, blank lines and
    indentation (the names page's size budget, 300 KB; the readable source is the package's).
    Safe for these files: none holds a string that spans lines (tests/test_webexport.py checks),
    and a comment after code goes only where "  // " follows code with no slash and no open quote."""
    kept = (_uncommented(line.lstrip(" ")) for line in _static(name).split("\n"))
    return "\n".join(line for line in kept if line and not line.startswith("//")) + "\n"


def _uncommented(line: str) -> str:
    """A line of script without the comment after its code, where that is certain to be one."""
    code, mark, _ = line.partition("  // ")
    if not mark or "/" in code or any(code.count(q) % 2 for q in "\"'`"):
        return line
    return code


def _sampler_script(ckpt: Checkpoint, encoding: Encoding) -> str:
    """MODEL and the sampler, as a classic script (the module and the page's worker both start so)."""
    data = json.dumps(model_data(ckpt, encoding), ensure_ascii=False, separators=(",", ":"))
    # Inside a <script>, "</" could end it, and "<!--<script" (a list of HTML's lines) made the page's
    # parser read past its end: every "<" is written "\u003c", which JSON (and JavaScript) parse the same
    # ("<" is only ever inside a string in JSON).
    data = data.replace("<", "\\u003c")
    return (f"// chargen {ckpt.describe().get('chargen_version') or ''} export of {ckpt.path.name.replace('<', '?')}: "
            f"{ckpt.model_config.layers} x {ckpt.model_config.hidden} {ckpt.model_config.cell}; {encoding.enc} weights\n"
            f"const MODEL = {data};\nconst KERNEL = \"{as_text(kernel())}\";\n" + _script("websampler.js"))


def module_text(ckpt: Checkpoint, encoding: Encoding) -> str:
    return _sampler_script(ckpt, encoding) + "\nexport { sample, sampleRecords, top, info, backend, ChargenError };\n"


def page_text(ckpt: Checkpoint, encoding: Encoding, title: Optional[str] = None) -> str:
    worker = _sampler_script(ckpt, encoding) + "\n" + _script("webpage-worker.js")
    name = title or ckpt.info.get("corpus") or checkpoint_name(ckpt.path)
    # the playground's controls the page shows too (their own placeholders filled below with the page's)
    parts = {"mode": _playground_part('<fieldset class="mode">'),
             "label_picker": _playground_part('<div class="for-labels"'),
             "settings": _playground_part('<div class="settings">'),
             "constraints": _playground_part('<details class="for-lines" id="constraints">'),
             "advanced": _playground_part('<details class="for-sample">'),
             "output": re.sub(r'(<p id="status"[^>]*>)[^<]*', r"\1Loading the model…", _playground_part('<section id="output"'))}
    page = filled(_dedented(_static("webpage.html")), parts, strict=False)
    fills = {"title": _html(f"{name}: chargen"), "name": _html(name), "css": _dedented(_static("playground.css")),
             "page_css": _dedented(_static("webpage.css")), "worker": worker.replace("</script", "<\\/script"),
             "script": _script("ui.js") + "\n" + _script("webpage.js"), **control_defaults()}
    return filled(page, fills)


PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")  # {{name}} in static/'s pages


def filled(template: str, values: dict[str, str], strict: bool = True) -> str:
    """`template` with each {{name}} replaced by values[name], in one pass (what is put in is not
    read again); a name without a value is a KeyError, or (strict=False) stays as it is."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)] if strict or m.group(1) in values else m.group(0), template)


def control_defaults() -> dict[str, str]:
    """The placeholders of the playground's controls (and so the page's) for the sampling options'
    declared defaults: the temperature slider's value and the number shown beside it."""
    t = declared(SampleConfig)["temperature"].default
    return {"temperature": f"{t:g}", "temperature_shown": f"{t:.2f}"}


def _playground_part(opening: str) -> str:
    """A part of the playground's form that the page shows too (one definition of its controls):
    the lines from `opening` to the closing tag at its indentation, less its `server-only` controls."""
    block = re.search(r"\n( *)" + re.escape(opening) + r".*?\n\1</\w+>\n", _static("playground.html"), re.S).group(0)[1:]
    return _dedented(re.sub(r'\n *<label class="[^"]*\bserver-only\b[^"]*">.*?</label>', "", block, flags=re.S))


def _dedented(text: str) -> str:
    """HTML or CSS without its lines' indentation (the names page's size budget): it means nothing
    to a browser there (the page's one <pre> is empty)."""
    return "\n".join(line.lstrip(" ") for line in text.split("\n"))


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def exported_checkpoint(ckpt: Checkpoint, encoding: Encoding, path: Path) -> None:
    """Write `ckpt` with the weights the export holds: `chargen sample` on it draws the export's samples."""
    values, start_state = exported(ckpt, encoding.enc, encoding.start)
    save_checkpoint(path, weights=values, model_config=ckpt.model_config, vocab_json=ckpt.vocab.to_json(),
                    train_config=ckpt.train_config, info=ckpt.info,
                    lines_blob=encode_lines(ckpt.training_lines) if ckpt.training_lines is not None else None,
                    start_state=start_state)
