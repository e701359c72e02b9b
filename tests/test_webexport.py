"""`chargen export --js/--html`: the exported JavaScript sampler held to the numpy sampler, the way
the numpy twin is held to torch: same options and seed, same texts, log-probabilities within float
rounding, over LSTM, GRU and RNN models of two and three layers, prompts, temperatures, top-k/top-p,
constraints and seeds. Under Node (Debian's `nodejs`, which .ci/run installs) and in Chromium
(Playwright, as the playground's test); each is skipped, saying why, where it cannot be had.
"""

from __future__ import annotations

import json
import os
import re
import random
import shutil
import string
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import chargen
from chargen.checkpoint import checkpoint_path, encode_lines, read_checkpoint, save_checkpoint
from chargen.config import ModelConfig
from chargen.tokenizer import Vocab
from chargen.webexport import (Encoding, choose_encoding, encode, exported_checkpoint, line_loss, module_text,
                               page_text, quantize_rows)

from .conftest import assert_clean_error, make_names, run

NODE = shutil.which("node") or shutil.which("nodejs")
needs_node = pytest.mark.skipif(NODE is None, reason="no Node.js to run the exported module: apt-get install nodejs")

# Option sets tried on every model: camelCase for the module, snake_case for the Python API.
CASES = [
    {"n": 40, "seed": 1},
    {"n": 30, "seed": 2, "temperature": 1.3, "prompt": "Ma"},
    {"n": 30, "seed": 3, "topK": 5},
    {"n": 30, "seed": 4, "topP": 0.7, "temperature": 1.0},
    {"n": 25, "seed": 5, "topK": 8, "topP": 0.9, "unique": True, "prompt": ["A", "Jo"]},
    {"n": 8, "seed": 6, "minLen": 3, "maxLen": 9, "endsWith": "a"},
    {"n": 50, "seed": 6, "minLen": 4, "endsWith": "a"},  # the adaptive sampler over many rounds (3-20 here)
    {"n": 8, "seed": 6, "minLen": 3, "maxLen": 9, "endsWith": "a", "rejection": True},
    {"n": 20, "seed": 10, "contains": "e"},  # one text, as the Python API takes it
    {"n": 10, "seed": 11, "contains": ["e", "n"], "temperature": 1.2},  # a product automaton, adaptive
    {"n": 8, "seed": 14, "contains": ["e"], "endsWith": "a", "temperature": 1.2},  # contains and ends with
    {"n": 10, "seed": 12, "contains": ["e", "n"], "rejection": True, "temperature": 1.2},
    {"n": 12, "seed": 13, "contains": ["e"], "unique": True, "prompt": "M", "temperature": 1.2},
    {"n": 15, "seed": 15, "regex": "[A-Z][a-z]{1,4}(e|n)", "temperature": 1.2},  # a regex, adaptive
    {"n": 10, "seed": 16, "regex": "(?i)m[^x]*", "contains": ["e"], "maxLen": 9},  # a regex in a product
    {"n": 10, "seed": 17, "regex": "[A-Za-z]+e", "rejection": True, "temperature": 1.2},
    {"n": 10, "seed": 18, "regex": "(?=.*a)(?!.*n)[A-Z][a-z]+", "temperature": 1.2},  # lookaheads: "a" and no "n"
    {"n": 5, "seed": 7, "temperature": 0, "minLen": 6},
    {"n": 4, "seed": 7, "temperature": 0, "contains": ["ll"]},  # greedy among the allowed
    {"n": 10, "seed": 8, "novel": True, "temperature": 1.5},
    # the tree told what is kept out after the constraints: repeats, training lines, `exclude`
    {"n": 40, "seed": 19, "maxLen": 4, "endsWith": "a", "unique": True, "novel": True, "temperature": 1.3},
    {"n": 30, "seed": 20, "maxLen": 3, "endsWith": "a", "exclude": [c + "a" for c in string.ascii_letters]},
    {"n": 3, "seed": 9, "lines": False, "length": 60, "prompt": "Ann"},
    {"n": 4, "seed": 2**62 + 12345, "temperature": 0.5},
    {"n": 2, "seed": 5, "temperature": 5e-324, "prompt": "Ma"},  # (the logits over it overflowed: nothing drawn)
]


def snake(options: dict) -> dict:
    out = {}
    for k, v in options.items():
        name = "".join("_" + c.lower() if c.isupper() else c for c in k)
        out["num" if name == "n" else name] = v
    return out


def random_model(path: Path, cell: str, layers: int, seed: int = 0, extra: str = "", learned_start: bool = False,
                 more_lines: tuple[str, ...] = ()) -> Path:
    """A checkpoint with random weights: large enough that the distributions are far from uniform, and
    a newline likely enough that lines end as names do. (Much larger weights make the recurrence
    chaotic, as trained models are not: float rounding then grows over a long sample until a draw
    differs, between numpy's float32 and any other arithmetic, numpy's own at another batch width too.)"""
    names = make_names(300, seed=seed).splitlines() + list(more_lines)
    vocab = Vocab(sorted(set("".join(names)) | set(string.ascii_letters) | set(extra) | {"\n"}))
    cfg = ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=24, embed=8, learned_start=learned_start)
    rng = np.random.default_rng(seed)
    weights = {k: (rng.standard_normal(shape) * 0.4).astype(np.float32) for k, shape in cfg.weight_shapes().items()}
    weights["head.bias"][vocab.index["\n"]] += 2.5
    start = [rng.standard_normal((layers, 24)).astype(np.float32) * 0.3 for _ in range(cfg.state_tensors)]
    save_checkpoint(path, weights=weights, model_config=cfg, vocab_json=vocab.to_json(), train_config={},
                    info={"corpus": "random", "line_oriented": True}, lines_blob=encode_lines(names), start_state=start)
    return path


CONSTRAINT_KEYS = ("min_len", "max_len", "ends_with", "contains", "regex")
MASS_KEYS = ("p_constraints", "p_constraints_lower", "p_constraints_upper")


def python_records(path: Path, options: dict) -> list[dict]:
    """The Python API's samples as the module's records, unrounded: under constraints with what
    Sample.record adds (the mass kept, the guided log-probability, the estimate of Z and its bounds)."""
    o = snake(options)
    n, prompt = o.pop("num"), o.pop("prompt", "")
    constrained = any(o.get(k) for k in CONSTRAINT_KEYS)
    out = []
    for s in chargen.load(path).samples(n, prompt, **o):
        r = {"text": s.text, "logprob": s.logprob, **({"label": s.label} if s.label else {})}
        if constrained:
            r.update(kept=s.kept, logprob_guided=s.logprob_guided)
            if s.mass is not None:
                r.update(zip(MASS_KEYS, (s.mass.estimate, s.mass.lower, s.mass.upper)))
        out.append(r)
    return out


def node_records(module: Path, cases: list[dict], backend: str = "wasm-simd", call: str = "sampleRecords") -> list:
    """Each case's records from the module's `call` (sampleRecords, or top) under Node (or its error
    message); "javascript": with WebAssembly hidden, as an engine without it runs the module."""
    script = ("import(process.argv[1]).then((m) => { const out = JSON.parse(process.argv[2]).map((o) => {"
              " if (o.seed && typeof o.seed === 'object') o.seed = BigInt(o.seed.bigint);"
              f" try {{ return m.{call}(o); }} catch (e) {{ return {{ error: e.message }}; }} }});"
              " process.stdout.write(JSON.stringify({ backend: m.backend(), out })); })")
    # a Python int seed arrives as a BigInt (exact past 2**53); any other value as JSON gives it
    wire = [{**c, "seed": {"bigint": str(c["seed"])}} if isinstance(c, dict) and type(c.get("seed")) is int else c
            for c in cases]
    flags = ["--no-expose-wasm"] if backend == "javascript" else []
    proc = subprocess.run([NODE, *flags, "-e", script, module.resolve().as_uri(), json.dumps(wire)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["backend"] == backend
    return got["out"]


def assert_same(js: list[dict], py: list[dict]) -> None:
    assert [r["text"] for r in js] == [r["text"] for r in py]
    assert [r.get("label") for r in js] == [r.get("label") for r in py]
    for key in ("logprob", "kept", "logprob_guided", *MASS_KEYS):  # float32 (numpy) against float64
        assert [key in r for r in js] == [key in r for r in py], key
        for a, b in zip(js, py):  # a sum over a sample's steps drifts as its log-probability does
            if key in a:  # (kept is logprob - logprob_guided: it drifts as both do)
                drifts = abs(b["logprob"]) + (abs(b["logprob_guided"]) if key == "kept" else 0.0)
                tolerance = 1e-4 * abs(b[key]) + 1e-12 if key in MASS_KEYS else \
                    1e-4 + 2e-5 * max(abs(b[key]), drifts)
                assert abs(a[key] - b[key]) <= tolerance, (key, a, b)


@needs_node
@pytest.mark.parametrize("cell,layers,backend", [("lstm", 2, "wasm-simd"), ("gru", 3, "wasm-simd"),
                                                 ("rnn", 2, "wasm-simd"), ("lstm", 3, "wasm-simd"),
                                                 ("gru", 2, "javascript")])
def test_module_matches_numpy_sampler(tmp_path, cell, layers, backend):
    ckpt_path = random_model(tmp_path / "m.safetensors", cell, layers, seed=layers)
    ckpt = read_checkpoint(ckpt_path)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(ckpt, Encoding("f32", True)))
    for case, js in zip(CASES, node_records(module, CASES, backend)):
        assert "error" not in js, (case, js)
        assert_same(js, python_records(ckpt_path, case))


@needs_node
def test_a_module_takes_decomposed_text_as_chargen_does(tmp_path):
    """A prompt, an ending, a text to contain and lines to exclude typed decomposed (e and a
    combining accent) are the vocabulary's é in the module as in chargen (Vocab.conform, conform())."""
    import unicodedata

    path = random_model(tmp_path / "m.safetensors", "lstm", 2, seed=5, extra="éü")
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(path), Encoding("f32", True)))
    cases = [{"n": 20, "seed": 1, "prompt": "Ré"}, {"n": 20, "seed": 2, "endsWith": "é", "maxLen": 6},
             {"n": 10, "seed": 3, "contains": ["ü"], "prompt": ["", "Mé"]},
             {"n": 30, "seed": 4, "prompt": "Ré", "maxLen": 3, "unique": True, "exclude": ["Réa", "Rée"]}]

    def nfd(v):
        return unicodedata.normalize("NFD", v) if isinstance(v, str) else [nfd(x) for x in v] if isinstance(v, list) else v

    decomposed = [{k: nfd(v) for k, v in case.items()} for case in cases]
    assert decomposed[0]["prompt"] != cases[0]["prompt"]
    for case, js in zip(cases, node_records(module, decomposed)):
        assert "error" not in js, (case, js)
        assert_same(js, python_records(path, case))


LABELS = ["it_IT:first", "it_IT:surname", "el_GR:first", "es_ES:city"]
LABEL_CASES = [
    {"n": 40, "seed": 1},  # every label, in training proportions
    {"n": 20, "seed": 2, "label": "el_GR:first"},
    {"n": 30, "seed": 3, "label": "it"},  # a part: both Italian labels
    {"n": 10, "seed": 3, "label": "it:first=0.5,es:city=0.5"},  # parts together: it_IT:first and es_ES:city
    {"n": 20, "seed": 10, "label": "IT=0.5,ES:city=0.5"},  # territories: it_IT's two labels and es_ES:city
    {"n": 20, "seed": 13, "label": "gr first names"},  # a territory in lower case, where no label has it so
    {"n": 20, "seed": 14, "label": "Spain cities=0.5,greece=0.5"},  # territories by their English names
    {"n": 30, "seed": 4, "label": "it_IT:first=0.2,es_ES:city=0.8", "temperature": 1.2, "prompt": ["", "Ma"]},
    {"n": 60, "seed": 5, "label": "first", "minLen": 4, "endsWith": "a"},  # the label tree, exact
    {"n": 20, "seed": 9, "label": "it=0.5,el_GR:first=0.5", "contains": ["e"]},
    {"n": 20, "seed": 11, "label": "Italian=0.5,greek:first=0.5"},  # languages by their English names
    {"n": 20, "seed": 12, "label": "greek first names=0.5,Italian Surnames=0.5"},  # pieces apart by spaces, plurals
    {"n": 20, "seed": 17, "label": "Greek given names=0.5,italian last names=0.5"},  # kinds by other words
    {"n": 20, "seed": 18, "label": "greek names=0.5,Italian People=0.5"},  # with no kind: people's names
    {"n": 20, "seed": 6, "label": "first", "minLen": 4, "endsWith": "a", "rejection": True},
    {"n": 20, "seed": 7, "label": "it=0.5,el_GR:first=0.5", "novel": True, "unique": True, "temperature": 1.5},
    {"n": 30, "seed": 15, "label": "it=0.5,el_GR:first=0.5", "maxLen": 4, "endsWith": "a", "novel": True, "unique": True},
    {"n": 5, "seed": 8, "label": "el_GR:first=1,es_ES:city=1", "temperature": 0},
    {"n": 20, "seed": 16, "label": {"it": 0.3, "es_ES:city": 0.7}, "endsWith": "a"},  # a blend as a mapping
]


def random_labelled_model(path: Path, seed: int = 3, labels: list[str] = LABELS,
                          counts: tuple[int, ...] = (100, 50, 150, 100), inherited: Optional[list[int]] = None) -> Path:
    """random_model with labels (four by default): a start state per label, training lines
    "LABEL<TAB>line", `counts` the labels' line counts (repeated as needed); `inherited`: as a run
    from a labelled model records the counts it started with."""
    names = make_names(400, seed=seed).splitlines()
    vocab = Vocab(sorted(set("".join(names)) | set(string.ascii_letters) | {"\n"}))
    cfg = ModelConfig(vocab_size=len(vocab), layers=2, hidden=24, embed=8, learned_start=True, n_labels=len(labels))
    rng = np.random.default_rng(seed)
    weights = {k: (rng.standard_normal(shape) * 0.4).astype(np.float32) for k, shape in cfg.weight_shapes().items()}
    weights["head.bias"][vocab.index["\n"]] += 2.5
    start = [rng.standard_normal((len(labels), 2, 24)).astype(np.float32) * 1.5 for _ in range(cfg.state_tensors)]
    lines = [f"{labels[i % len(labels)]}\t{name}" for i, name in enumerate(names)]
    info = {"corpus": "random", "line_oriented": True,
            "labels": {"names": labels, "lines": [counts[i % len(counts)] for i in range(len(labels))], "val_loss": {},
                       **({"inherited": inherited} if inherited is not None else {})}}
    save_checkpoint(path, weights=weights, model_config=cfg, vocab_json=vocab.to_json(), train_config={},
                    info=info, lines_blob=encode_lines(lines), start_state=start)
    return path


@needs_node
def test_a_module_of_a_model_adapted_with_labels_draws_its_own_labels_by_default(tmp_path):
    """A run from a labelled model (it inherited 100, 50 and 100 lines of three labels and trained
    its own 50 of it_IT:surname and 150 of el_GR:first): asked for no label, chargen and the module
    draw those two, in those proportions, the same names."""
    path = random_labelled_model(tmp_path / "m.safetensors", inherited=[100, 0, 0, 100])
    assert chargen.load(path).label_mix(None).names == ["it_IT:surname", "el_GR:first"]
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(path), Encoding("f32", True)))
    cases = [{"n": 40, "seed": 1}, {"n": 10, "seed": 2, "label": "it"}]
    got = node_records(module, cases)
    for case, js in zip(cases, got):
        assert "error" not in js, js
        assert_same(js, python_records(path, case))
    assert {r["label"] for r in got[0]} == {"it_IT:surname", "el_GR:first"}
    assert {r["label"] for r in got[1]} == {"it_IT:first", "it_IT:surname"}  # a part asks among every label


@needs_node
def test_a_label_with_no_training_lines_gets_chargens_message_from_a_module(tmp_path):
    """A label none of whose lines trained (the run's split held them all out) is the same one-line
    error in the module as in chargen, and weighs nothing within a part of it."""
    path = random_labelled_model(tmp_path / "m.safetensors", counts=(100, 0, 150, 100))
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(path), Encoding("f32", True)))
    got = node_records(module, [{"n": 1, "label": "it_IT:surname"}, {"n": 20, "seed": 4, "label": "it"}])
    with pytest.raises(chargen.UsageError) as python:
        chargen.load(path).sample(1, label="it_IT:surname")
    assert got[0]["error"] == str(python.value) and "no training lines" in got[0]["error"]
    assert "error" not in got[1] and {r["label"] for r in got[1]} == {"it_IT:first"}
    assert_same(got[1], python_records(path, {"n": 20, "seed": 4, "label": "it"}))


def resolves(path: Path, label: str) -> bool:
    try:
        chargen.load(path).label_mix(label)
    except chargen.UsageError:
        return False
    return True


@needs_node
def test_an_unknown_label_gets_chargens_message_from_a_module(tmp_path):
    """No close match: a few labels are listed by name, many by their kinds and languages (as
    chargen info shows them), in the module's words as in chargen's."""
    many = [f"{loc}:{kind}" for loc in ("it_IT", "el_GR", "es_ES", "de_DE", "fi_FI")
            for kind in ("first", "surname", "city")] + ["elves", "dwarves"]  # (neither a kind nor a language: by name)
    for name, labels in (("few", LABELS), ("many", many)):
        path = random_labelled_model(tmp_path / f"{name}.safetensors", labels=labels)
        module = tmp_path / f"{name}.mjs"
        module.write_text(module_text(read_checkpoint(path), Encoding("f32", True)))
        # and typos, whose close matches are difflib's (its ratio, ties the greater word first)
        rng = random.Random(len(labels))
        typos = ["".join(rng.sample(w, len(w))) if rng.random() < 0.3 else w[:-1] + rng.choice("aeiouxyz")
                 for w in rng.choices(["italian", "greek", "surnames", "cities", "finnish", "elves", "it", "el_GR",
                                       "germany", "first names", "spanish"], k=40)]
        terms = ["xyzzy", "russian", "RU", "Russia cities", "united states", "mexican", "dwarves towns", "elves people",
                 "greek roads", "italian poets", "it_IT:frist", "grek first names", *[t for t in dict.fromkeys(typos) if not resolves(path, t)]]
        got = node_records(module, [{"n": 1, "label": term} for term in terms])
        for term, js in zip(terms, (g["error"] for g in got)):
            with pytest.raises(chargen.UsageError) as python:
                chargen.load(path).sample(1, label=term)
            assert js.replace("its info", "chargen info --labels") == str(python.value), (name, term)
        expected = ("it has 17: labels elves, dwarves; kinds city, first, surname; languages finnish, german, greek, "
                    "italian, spanish"
                    if name == "many" else "it has 4: it_IT:first, it_IT:surname, el_GR:first, es_ES:city")
        assert expected in got[0]["error"] and "no label is in Russian (ru)" in got[1]["error"], (name, got)
        assert "no label is from Russia (RU)" in got[2]["error"] and "from United States (US)" in got[4]["error"]


@needs_node
def test_a_labelled_module_draws_the_labels_and_names_chargen_draws(tmp_path):
    ckpt_path = random_labelled_model(tmp_path / "m.safetensors")
    ckpt = read_checkpoint(ckpt_path)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(ckpt, Encoding("f32", True)))
    bad = [{"n": 2, "label": "it=1e308,es=1e308"}, {"n": 2, "label": "greek cities"}, {"n": 2, "label": "italian poets"},
           {"n": 2, "label": "Itallian"}, {"n": 2, "label": "it_IT:frist"}, {"n": 2, "label": "it=x"}]
    got = node_records(module, LABEL_CASES + bad)
    for case, js in zip(LABEL_CASES, got):
        assert "error" not in js, (case, js)
        assert_same(js, python_records(ckpt_path, case))
    assert {r["label"] for r in got[3]} == {"it_IT:first", "es_ES:city"}
    assert {r["label"] for r in got[5]} == {"el_GR:first"}  # gr: GR
    assert {r["label"] for r in got[6]} == {"es_ES:city", "el_GR:first"}  # spain cities, greece
    # int8's cost is measured on the stored lines, each under its own label (a loss, not None)
    enc = choose_encoding(ckpt, "i8")
    assert enc.loss is not None and 1.0 < enc.loss < 10.0 and abs(enc.loss_exported - enc.loss) < 0.05
    assert "unknown label 'it_IT:frist': no label has 'frist'; did you mean 'it_IT:first'?" in got[-2]["error"]
    assert "unknown label 'Itallian'; close: italian" in got[-3]["error"]
    assert "unknown label 'italian poets': no label has 'poets'" in got[-4]["error"]
    assert "unknown label 'greek cities': no label has all of greek, cities; greek: el_GR:first " in got[-5]["error"]
    assert "weight" in got[-1]["error"]
    with pytest.raises(chargen.UsageError) as python:  # weights whose sum would overflow: the same words
        chargen.load(ckpt_path).sample(2, label="it=1e308,es=1e308")
    assert got[-6]["error"].replace("`", "") == str(python.value).replace("`", "")
    assert "at most 1,000,000,000" in got[-6]["error"]
    # a mapping is the blend its text writes; a label of another kind is the same error in both
    as_text = node_records(module, [{"n": 20, "seed": 16, "label": "it=0.3,es_ES:city=0.7", "endsWith": "a"}])[0]
    assert_same(got[len(LABEL_CASES) - 1], as_text)
    wrong = [5, ["it"], {}, {"it": "x"}, {"it": True}, {"a,b": 1}]
    for label, js in zip(wrong, node_records(module, [{"n": 1, "label": label} for label in wrong])):
        with pytest.raises(chargen.ChargenError) as python:
            chargen.load(ckpt_path).sample(1, label=label)
        # (the same words up to the value shown, which each language writes its way)
        assert js["error"].replace("`", "").split(" (got")[0] == str(python.value).split(" (got")[0], label


def python_top(path: Path, options: dict) -> list[dict]:
    o = snake(options)
    n, prompt = o.pop("num"), o.pop("prompt", "")
    return [{"text": s.text, "logprob": s.logprob, "chars": s.n_chars, **({"label": s.label} if s.label else {})}
            for s in chargen.load(path).top(n, prompt, **o)]


def assert_same_top(js: list[dict], py: list[dict]) -> None:
    """The same samples in the same order, to float32 rounding: two samples whose log-probabilities
    lie within it may come in either order (numpy ranks in float32, the module in float64)."""
    assert len(js) == len(py)
    for k, (a, b) in enumerate(zip(js, py)):
        assert abs(a["logprob"] - b["logprob"]) <= 1e-4 + 2e-5 * abs(b["logprob"]), (k, a, b)
        if a["text"] != b["text"]:  # a near tie, swapped
            assert {a["text"]} <= {r["text"] for r in py[max(0, k - 1): k + 2]} and abs(a["logprob"] - b["logprob"]) < 1e-4, (k, a, b)
        else:
            assert a["chars"] == b["chars"] and a.get("label") == b.get("label") and a["prompt"] == "".join(
                b["text"][: len(b["text"]) - b["chars"] + 1]), (k, a, b)


TOP_CASES = [{"n": 12}, {"n": 6, "prompt": "Ma"}, {"n": 8, "endsWith": "a", "maxLen": 6},
             {"n": 6, "regex": "[A-Z][a-z]*(e|n)"}, {"n": 6, "contains": ["a"]}, {"n": 5, "minLen": 3},
             {"n": 3, "prompt": ["Jo", "Ka"], "length": 4}]


@needs_node
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 3)])
def test_a_modules_top_lists_the_most_likely_samples_chargen_lists(tmp_path, cell, layers):
    """`top` in the module: the exact best-first search, the same samples in the same order as
    `chargen sample --top` under every option it takes; `exclude` skips what it names."""
    ckpt_path = random_model(tmp_path / "m.safetensors", cell, layers, seed=layers)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    first = python_top(ckpt_path, {"n": 3})
    cases = TOP_CASES + [{"n": 3, "exclude": [first[0]["text"], first[2]["text"]]}]
    for case, js in zip(cases, node_records(module, cases, call="top")):
        assert "error" not in js, (case, js)
        assert_same_top(js, python_top(ckpt_path, case))
    assert [r["text"] for r in node_records(module, cases[-1:], call="top")[0]][:1] == [first[1]["text"]]


@needs_node
def test_a_modules_top_tells_its_progress_as_chargens_does(tmp_path):
    """`top(options, progress)`: the prefixes searched so far, rising, as `model.top(progress=)` is told
    them (by the module every 64 expansions, by chargen after each batch of them)."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2, seed=2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    script = ("import(process.argv[1]).then((m) => { const seen = [];"
              " const r = m.top({ n: 20, minLen: 3 }, (k) => seen.push(k));"
              " process.stdout.write(JSON.stringify({ seen, texts: r.map((x) => x.text) })); })")
    proc = subprocess.run([NODE, "-e", script, module.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got, told = json.loads(proc.stdout), []
    expected = [s.text for s in chargen.load(ckpt_path).top(20, min_len=3, progress=told.append)]
    assert got["texts"] == expected and len(got["seen"]) >= 2
    assert got["seen"] == sorted(got["seen"]) and all(k % 64 == 0 for k in got["seen"])
    assert got["seen"][-1] <= told[-1] < got["seen"][-1] + 64 + 256  # (chargen's last batch: up to 256 prefixes)


@needs_node
def test_the_bundled_names_modules_top_lists_what_chargen_lists(tmp_path):
    """A trained model's most likely names (real names, many of them training lines: `novel` skips
    those), from the module as exported by default (int8 weights: lossless for this model)."""
    out = tmp_path / "names.mjs"
    assert run(["export", "names", "--js", str(out)]).returncode == 0
    cases = [{"n": 25}, {"n": 15, "novel": True}, {"n": 10, "prompt": "Ma", "endsWith": "a"},
             {"n": 10, "regex": "[A-Z][a-z]*(el|ia)", "maxLen": 7}]
    got = node_records(out, cases, call="top")
    expected = [python_top(checkpoint_path("names"), case) for case in cases]
    for case, js, py in zip(cases, got, expected):
        assert "error" not in js, (case, js)
        assert_same_top(js, py)
    training = chargen.load("names").training_lines
    assert sum(r["text"] in training for r in got[0]) >= 10 and not any(r["text"] in training for r in got[1])


@needs_node
def test_a_labelled_modules_top_ranks_by_the_mixture_and_drops_labels_as_chargen_does(tmp_path, monkeypatch):
    """Under a blend a prefix drops its least likely labels and a complete sample that held one is
    scored again under every label: the list is exact whatever is dropped, so a module dropping at
    3 nats (and keeping the states of 40 prefixes, computing the others again) lists what chargen
    lists dropping at 12: there the first case's search drops labels and scores 4 complete samples
    again (counted by hand). A dropped label's mass is a floor under every extension of the prefix,
    so dropped so close the rarer constraint's search does not end: that case runs at 12 only."""
    import chargen.webexport as webexport

    ckpt_path = random_labelled_model(tmp_path / "m.safetensors")
    cases = [{"n": 10}, {"n": 6, "label": "it"}, {"n": 6, "label": "el_GR:first"},
             {"n": 8, "label": "it=0.3,es_ES:city=0.7", "endsWith": "a"}, {"n": 5, "novel": True, "prompt": "A"}]
    expected = [python_top(ckpt_path, case) for case in cases]
    assert {r["label"] for r in expected[0]} >= {"it_IT:surname", "es_ES:city"}
    for drop, cache in ((12.0, None), (3.0, 40)):
        monkeypatch.setattr(webexport, "DROP", drop)
        if cache:  # (rows of (state + V) float64s: 40 prefixes of 4 labels)
            monkeypatch.setattr(webexport, "SEARCH_CACHE", 40 * 4 * 8 * (2 * 2 * 24 + len(read_checkpoint(ckpt_path).vocab.chars)))
        module = tmp_path / f"m{drop}.mjs"
        module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
        some = cases if drop == 12.0 else [c for c in cases if "endsWith" not in c]
        for case, js in zip(some, node_records(module, some, call="top")):
            assert "error" not in js, (drop, case, js)
            assert_same_top(js, expected[cases.index(case)])


@needs_node
def test_a_modules_top_refuses_what_chargens_refuses(tmp_path):
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    """The sampling settings and prose as chargen's `top` refuses them; any other bad option as the
    module's `sample` refuses it (its one wording)."""
    cases = [{"n": 2, "seed": 1, "temperature": 0.5}, {"n": 2, "unique": True}, {"n": 2, "lines": False},
             {"n": 2, "regex": "[0-9]+"}, {"n": 2, "label": "it"}, {"n": 0}, {"n": 2, "endsWith": "Ω"},
             {"n": 2, "minLen": 5, "maxLen": 3}, {"n": 2, "prompt": 7}]
    got = node_records(module, cases, call="top")
    for case, js in zip(cases[:3], got):
        with pytest.raises(chargen.UsageError) as python:
            python_top(ckpt_path, case)
        assert js["error"].replace("`", "").replace("lines: false", "lines=False") == str(python.value), case
    assert got[0]["error"] == "`top` ranks by the model's own probabilities and never repeats; drop `seed`, `temperature`"
    assert got[3:] == [{"error": r["error"]} for r in node_records(module, cases[3:])]


def test_the_bundled_models_pages_stay_within_their_budgets():
    """Issue 30's sizes: the names page at most 300 KB, the base model's at most 1.5 MB (its 267 labels'
    start states as int8 rows; as float32 they alone were 1 MB of a 1.86 MB page); each lossless."""
    for name, budget in (("names", 300 * 1024), ("base", 1536 * 1024)):
        ckpt = read_checkpoint(checkpoint_path(name))
        enc = choose_encoding(ckpt)
        assert enc.lossless and len(page_text(ckpt, enc).encode()) <= budget, name


def test_the_cost_of_int8_is_measured_on_whole_lines_each_under_its_label(tmp_path):
    """line_loss, which `auto` weighs int8 by, is the loss `score` gives each stored line under its own
    label, its newline included (it once left the newlines out)."""
    path = random_labelled_model(tmp_path / "m.safetensors")
    ckpt, model = read_checkpoint(path), chargen.load(path)
    total = chars = 0.0
    for line in ckpt.training_lines:
        label, text = line.split("\t", 1)
        (score,) = model.score([text], label=label)
        total, chars = total - score.logprob, chars + score.chars
    assert line_loss(ckpt) == pytest.approx(total / chars, rel=1e-5)


@needs_node
def test_start_states_on_the_int8_grid_export_exactly(tmp_path):
    """`--weights i8` puts each label's and layer's start state on the int8 grid with the weights; the
    checkpoint it writes then exports lossless, its start states as int8 rows, and the module draws
    what chargen draws. Where only the weights lie on the grid, `auto` keeps the start state float32."""
    ckpt = read_checkpoint(random_labelled_model(tmp_path / "m.safetensors"))
    enc = choose_encoding(ckpt, "i8")
    assert not enc.lossless and enc.start is None and enc.loss_exported != enc.loss
    exported_checkpoint(ckpt, enc, tmp_path / "q.safetensors")
    snapped = read_checkpoint(tmp_path / "q.safetensors")
    assert not np.array_equal(snapped.start_state[0], ckpt.start_state[0])
    assert np.array_equal(np.stack(snapped.start_state, axis=1), snapped.weights["start"])
    assert choose_encoding(snapped) == Encoding("i8", True)
    module = tmp_path / "q.mjs"
    module.write_text(module_text(snapped, Encoding("i8", True)))
    assert '"start_state":[{"shape":[8,24],"enc":"i8"' in module.read_text()  # 4 labels x 2 layers
    for case, js in zip(LABEL_CASES[:4], node_records(module, LABEL_CASES[:4])):
        assert_same(js, python_records(tmp_path / "q.safetensors", case))
    # the snapped weights with the first start states: lossless only with the start state as float32
    save_checkpoint(tmp_path / "off.safetensors", weights={**snapped.weights, "start": ckpt.weights["start"]},
                    model_config=snapped.model_config, vocab_json=snapped.vocab.to_json(), train_config={},
                    info=snapped.info, lines_blob=encode_lines(snapped.training_lines), start_state=ckpt.start_state)
    off = read_checkpoint(tmp_path / "off.safetensors")
    assert choose_encoding(off) == Encoding("i8", True, start="f32")
    assert "(the start state float32), exactly the checkpoint's" in choose_encoding(off).describe()
    assert not choose_encoding(off, "i8").lossless


@needs_node
@pytest.mark.parametrize("name, options, flags", [
    ("names", "n: 500, seed: 11, topK: 12", ["-n", "500", "--seed", "11", "--top-k", "12"]),
    # the base model: its labels' start states as int8 rows, a label and a blend of two parts
    ("base", "n: 300, seed: 3, label: 'el_GR:first=0.5,it=0.5'", ["-n", "300", "--seed", "3", "--label",
                                                                  "el_GR:first=0.5,it=0.5"]),
])
def test_bundled_modules_print_what_chargen_sample_prints(tmp_path, name, options, flags):
    """The README's promise, through the installed command: export, then `node -e` gives the same names."""
    proc = run(["export", name, "--js", str(tmp_path / "m.mjs")])
    assert proc.returncode == 0, proc.stderr
    assert "exactly the checkpoint's" in " ".join(proc.stderr.decode().split())  # the weights lie on the int8 grid
    script = f"import(process.argv[1]).then((m) => process.stdout.write(m.sample({{ {options} }}).join('\\n') + '\\n'))"
    node = subprocess.run([NODE, "-e", script, (tmp_path / "m.mjs").as_uri()], capture_output=True, text=True,
                          timeout=120)
    cli = run(["sample", "-c", name, *flags])
    assert node.returncode == 0 and cli.returncode == 0, node.stderr + cli.stderr.decode()
    n = int(flags[1])
    assert node.stdout == cli.stdout.decode() and len(node.stdout.splitlines()) == n


@needs_node
def test_plain_draws_share_their_prefixes_and_draw_the_same(tmp_path):
    """The module steps each prefix once and keeps its draw at one setting (chargen.sampling.prefixes'
    twin in websampler.js, kept between calls for the same start): with no memory for it, with room
    for 40 prefixes, or with prefixes of one character only, every record is the same, and a call
    that reuses an earlier one's prefixes, at the same settings or others, draws what a fresh
    module draws."""
    from chargen.sampling.prefixes import PREFIX_MEMORY

    ckpt = read_checkpoint(checkpoint_path("base"))
    text = module_text(ckpt, choose_encoding(ckpt))
    setting = f'"prefix_memory":{PREFIX_MEMORY}'
    assert text.count(setting) == 1 and text.count('"prefix_depth":') == 1
    tiny = 8 * 40 * (len(ckpt.vocab) + 2 * ckpt.model_config.layers * ckpt.model_config.hidden)
    variants = {"default": text, "none": text.replace(setting, '"prefix_memory":0'),
                "tiny": text.replace(setting, f'"prefix_memory":{tiny}'),
                "shallow": re.sub(r'"prefix_depth":\d+', '"prefix_depth":1', text)}
    cases = [{"n": 400, "seed": 1, "label": "it_IT:first"}, {"n": 400, "seed": 1, "label": "it_IT:first"},
             {"n": 400, "seed": 1, "label": "it_IT:first", "temperature": 1.3, "topK": 8},  # other settings, same nodes
             {"n": 400, "seed": 1, "label": "it_IT:first"},
             {"n": 300, "seed": 2, "label": "es_ES:first=0.5,de_DE:city=0.5", "prompt": "Ma"},
             {"n": 200, "seed": 3, "label": "en_US:first", "endsWith": "a", "rejection": True, "unique": True}]
    got = {}
    for name, module_source in variants.items():
        module = tmp_path / f"{name}.mjs"
        module.write_text(module_source)
        got[name] = node_records(module, cases)
    assert all("error" not in r for records in got["default"] for r in records)
    assert got["default"][0] == got["default"][1] == got["default"][3] != got["default"][2]
    for name in ("none", "tiny", "shallow"):
        assert got[name] == got["default"], name


@needs_node
def test_module_calls_without_a_seed_start_from_warm_trees(tmp_path):
    """As chargen's Model does: a call without a seed takes the adaptive sampler's tree an earlier
    call with the same prompt, constraints and settings gave back (websampler.js's WarmTrees), so
    later calls need fewer draws (`stats`) than calls that each start a tree (their temperatures
    differ by 1e-9: other settings, so other trees); every sample satisfies its own call's
    constraints (a tree taken under other constraints would not), and a seeded call draws what it
    draws in a fresh module."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    regex = {"regex": "[A-Z][a-z]*(e|n)", "temperature": 1.2}
    ends = {"endsWith": "n", "minLen": 3, "temperature": 1.2}
    seeded = {"n": 30, "seed": 5, **regex}
    cold = [{"n": 10, **regex, "temperature": 1.2 + k * 1e-9} for k in range(1, 9)]
    warm = [{"n": 10, **(ends if k % 3 == 2 else regex)} for k in range(60)]
    calls = [seeded, *cold, *warm, seeded]
    script = ("import(process.argv[1]).then((m) => { const out = JSON.parse(process.argv[2]).map((o) => {"
              " const stats = {}; const texts = m.sampleRecords(o, stats).map((r) => r.text);"
              " return { texts, draws: stats.draws, accepted: stats.accepted }; });"
              " process.stdout.write(JSON.stringify(out)); })")
    proc = subprocess.run([NODE, "-e", script, module.resolve().as_uri(), json.dumps(calls)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got[0] == got[-1] and got[0]["texts"] == [r["text"] for r in python_records(ckpt_path, seeded)]
    for call, out in zip(calls[1:-1], got[1:-1]):
        assert out["accepted"] == 10 and len(out["texts"]) == 10 and out["draws"] >= 10
        if "regex" in call:
            assert all(re.fullmatch(regex["regex"], t) for t in out["texts"]), out
        else:
            assert all(t.endswith("n") and len(t) >= 3 for t in out["texts"]), out
    cold_draws = [out["draws"] for out in got[1:1 + len(cold)]]
    warm_draws = [out["draws"] for call, out in zip(warm, got[1 + len(cold):-1]) if "regex" in call][-10:]
    # (over 20 runs the ratio was 2.3-5.8; with no tree given back it is about 1)
    assert np.mean(cold_draws) > 1.5 * np.mean(warm_draws), (cold_draws, warm_draws)


@needs_node
def test_module_calls_without_a_seed_give_back_what_unique_ruled_out(tmp_path):
    """Warm calls under `unique` (websampler.js's PrefixTree.endCall, as chargen's end_call): three
    calls of 20 distinct samples from a language of fewer than 60 (two characters at most, ending
    in "n") share one tree; each succeeds, since each gives back the samples it ruled out for
    itself before the next takes the tree (kept, they would leave the third too few)."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    call = {"n": 20, "unique": True, "maxLen": 2, "endsWith": "n", "temperature": 1.5}
    with pytest.raises(chargen.UsageError, match="only [0-9]+ distinct samples"):
        chargen.load(ckpt_path).sample(60, unique=True, max_len=2, ends_with="n")
    got = node_records(module, [call] * 3)
    for records in got:
        assert "error" not in records, records
        texts = [r["text"] for r in records]
        assert len(set(texts)) == 20 and all(len(t) <= 2 and t.endswith("n") for t in texts)
    # A blend's tree (LabelTree.endCall) through the same calls: each gets its 30 distinct samples
    labelled = random_labelled_model(tmp_path / "l.safetensors")
    module.write_text(module_text(read_checkpoint(labelled), Encoding("f32", True)))
    blend = {"n": 30, "unique": True, "maxLen": 2, "endsWith": "a", "label": "it=0.5,el_GR:first=0.5", "temperature": 1.5}
    for records in node_records(module, [blend] * 3):
        assert "error" not in records, records
        assert len({r["text"] for r in records}) == 30


def module_with_tree_room(ckpt_path: Path, nodes: int, monkeypatch) -> tuple[Path, str]:
    """The checkpoint's module (beside it) with room for `nodes` nodes in the adaptive sampler's
    tree, and chargen's trees with as little while the test runs; and the module's usual text."""
    from chargen.sampling.tree import TREE_MEMORY, PrefixTree, node_bytes

    ckpt = read_checkpoint(ckpt_path)
    cfg = ckpt.model_config
    tiny = nodes * node_bytes(cfg.vocab_size, cfg.layers * cfg.state_tensors * cfg.hidden)
    text = module_text(ckpt, Encoding("f32", True))
    setting = f'"tree_memory":{TREE_MEMORY}'
    assert text.count(setting) == 1
    module = ckpt_path.with_suffix(".mjs")
    module.write_text(text.replace(setting, f'"tree_memory":{tiny}'))
    monkeypatch.setitem(PrefixTree.__init__.__kwdefaults__, "memory", tiny)
    return module, text


@needs_node
def test_a_full_tree_evicts_as_chargen_does(tmp_path, monkeypatch):
    """With room for 1,500 nodes, the adaptive sampler's tree evicts leaves in its first rounds,
    then finds none left and makes nodes that live for one round: the module evicts the nodes
    chargen may evict and as many (websampler.js's set of leaves against tree.py's arrays; which
    of them go changes no sample, only what is cached, but evicting a node with children or
    miscounting does), so a seed still gives the same samples."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module, text = module_with_tree_room(ckpt_path, 1500, monkeypatch)
    cases = [{"n": 200, "seed": 4, "regex": "[A-Z][a-z]*(e|n)", "temperature": 1.2},  # (rounds 1 and 2 evict some)
             {"n": 400, "seed": 3, "endsWith": "n", "minLen": 3},  # (from round 2 on, round-only nodes)
             {"n": 400, "seed": 5, "endsWith": "n", "maxLen": 6, "unique": True}]  # (nodes that rule repeats out: kept)
    fresh = node_records(module, cases)
    for case, js in zip(cases, fresh):
        assert_same(js, python_records(ckpt_path, case))
    module.write_text(text)
    assert node_records(module, cases) != fresh  # (the cap changed which samples came)


@needs_node
def test_a_model_with_large_nodes_runs_narrower_rounds_in_the_module_too(tmp_path, monkeypatch):
    """The adaptive sampler's round width follows the size of a model's nodes (tree.round_width);
    the export carries its model's, so a seed draws the CLI's names where rounds are narrow."""
    from chargen.sampling import tree

    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    ckpt = read_checkpoint(ckpt_path)
    cfg = ckpt.model_config
    size = tree.node_bytes(cfg.vocab_size, cfg.layers * cfg.state_tensors * cfg.hidden)
    assert tree.round_width(size) == tree.MAX_BATCH
    monkeypatch.setattr(tree, "ROUND_BYTES", 300 * size)  # as if its nodes were 14x larger
    assert tree.round_width(size) == 256
    text = module_text(ckpt, Encoding("f32", True))
    assert '"max_batch":256' in text
    module = tmp_path / "m.mjs"
    module.write_text(text)
    cases = [{"n": 300, "seed": 4, "regex": "[A-Z][a-z]*(e|n)"}]
    narrow = node_records(module, cases)
    assert_same(narrow[0], python_records(ckpt_path, cases[0]))
    monkeypatch.undo()
    assert python_records(ckpt_path, cases[0]) != narrow[0]  # (the width changed which samples came)


@needs_node
def test_a_blends_labels_share_one_trees_memory_as_chargen_does(tmp_path, monkeypatch):
    """A blend's labels are roots of one tree: with room for 300 nodes, the leaves evicted are the
    least recently used of any label, in the module as in chargen, so a seed still gives the same
    labels and names (a tree per label with a share of the memory drew others)."""
    ckpt_path = random_labelled_model(tmp_path / "m.safetensors")
    module, text = module_with_tree_room(ckpt_path, 300, monkeypatch)
    cases = [{"n": 150, "seed": 4, "endsWith": "n", "minLen": 3},  # every label
             {"n": 150, "seed": 5, "label": "it=0.5,el_GR:first=0.5", "regex": "[A-Z][a-z]*(e|n)", "temperature": 1.2}]
    fresh = node_records(module, cases)
    for case, js in zip(cases, fresh):
        assert "error" not in js, (case, js)
        assert_same(js, python_records(ckpt_path, case))
        assert len({r["label"] for r in js}) >= 3
    module.write_text(text)
    assert node_records(module, cases) != fresh  # (the cap changed which samples came)


@needs_node
def test_module_errors_are_clear(tmp_path):
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    cases = [{"n": 1, "prompt": "Ω"}, {"n": 1, "guided": True}, {"n": 1, "tempertaure": 1}, {"n": 0},
             {"n": 1, "minLen": 9, "maxLen": 3}, {"n": 1, "endsWith": "Ω"}, {"n": 1, "seed": -1},
             {"n": 1, "contains": ["a", "Ω"]}, {"n": 1, "contains": "a\nb"}, {"n": 1, "contains": [3]},
             {"n": 1, "contains": list("abcdefghijklmnop")}, {"n": 1, "contains": ["xyz"], "maxLen": 2},
             {"n": 1, "regex": "a(b"}, {"n": 1, "regex": 7}, {"n": 1, "prompt": 5}, {"n": 1, "prompt": ["a", 5]},
             {"n": 1, "exclude": "Anna"}, {"n": 1, "unique": "yes"}, "n=1", {"n": 1, "endsWith": "a" * 30000},
             {"n": 1, "seed": True}, {"n": 1, "seed": "0x10"}, {"n": 1, "seed": 1.5}, {"n": 1, "topP": "0.5"},
             {"n": "2"}, {"n": 1, "temperature": "1"}]
    errors = [r.get("error", "") if isinstance(r, dict) else "(samples)" for r in node_records(module, cases)]
    for needle, error in zip(["not in the model's vocabulary", "`guided` is not in an exported model",
                              "unknown option `tempertaure`", "`n` must be", "above `maxLen`",
                              "not in the model's vocabulary", "`seed` must be",
                              '`contains` "Ω" holds "Ω", not in the model\'s vocabulary', "cannot hold a newline",
                              "`contains` must be a text or a list of texts", "more than 20,000 automaton states",
                              "no sample satisfies the constraints within 2 characters",
                              '`regex` "a(b" is not a regular expression an exported model compiles',
                              "`regex` must be a text", "`prompt` must be a text or a list of texts",
                              "`prompt` must be a text or a list of texts", "`exclude` must be a list of texts",
                              "`unique` must be true or false", "the options must be an object",
                              "more than 20,000 automaton states",
                              # (a seed is a number, a BigInt or a decimal string; no other value is coerced)
                              '`seed` must be an integer (got "true")', '`seed` must be an integer (got "0x10")',
                              '`seed` must be an integer (got "1.5")', '`topP` must be in (0, 1] (got "0.5")',
                              '`n` must be an integer of at least 1 (got "2")',
                              '`temperature` must be 0 (greedy) or more (got "1")'], errors, strict=True):
        assert needle in error, errors
    big = node_records(module, [{"n": 3, "seed": "9223372036854775807"}, {"n": 3, "seed": " 42 "}])
    assert [r["text"] for r in big[0]] == [s.text for s in chargen.load(ckpt_path).samples(3, seed=2**63 - 1)]
    assert [r["text"] for r in big[1]] == [s.text for s in chargen.load(ckpt_path).samples(3, seed=42)]


@needs_node
def test_the_smallest_temperature_draws_as_greedy_does_in_the_module(tmp_path):
    """As chargen.sampling.engine.sampling_probs: at 5e-324 the logits' quotients overflowed."""
    module = tmp_path / "names.mjs"
    module.write_text(module_text(read_checkpoint(checkpoint_path("names")), Encoding("i8", True)))
    tiny, greedy = node_records(module, [{"n": 3, "seed": 5, "temperature": 5e-324}, {"n": 3, "temperature": 0}])
    assert [r["text"] for r in tiny] == [r["text"] for r in greedy] == chargen.load("names").sample(3, temperature=0)


@needs_node
def test_prose_from_a_model_trained_line_by_line_is_refused_by_both(tmp_path):
    """A model trained in line mode (its learned start state) never learnt what follows a line's end:
    the module refuses `lines: false` as the Python sampler refuses lines=False, and draws lines."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2, learned_start=True)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    case = {"n": 2, "seed": 3, "lines": False, "length": 40}
    js = node_records(module, [case, {"n": 2, "seed": 3}])
    with pytest.raises(chargen.UsageError, match="it draws lines only") as python:
        chargen.load(ckpt_path).sample(2, seed=3, lines=False, length=40)
    assert js[0]["error"].split("; drop")[0] == str(python.value).split("; drop")[0]
    assert_same(js[1], python_records(ckpt_path, {"n": 2, "seed": 3}))


@needs_node
def test_a_bigint_or_nan_where_an_option_wants_another_number_is_shown_in_the_error(tmp_path):
    """JSON.stringify throws on a BigInt: an option's error showed TypeError "Do not know how to
    serialize a BigInt" instead of the option's own message (found by random option values)."""
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(random_model(tmp_path / "m.safetensors", "lstm", 1)),
                                  Encoding("f32", True)))
    script = ("import(process.argv[1]).then(m => { for (const o of [{topK: 10n}, {n: [2n]}, {temperature: NaN}, "
              "{topP: Infinity}, {unique: 1n}]) { try { m.sample(o); console.log('(samples)') } "
              "catch (e) { console.log(`${e instanceof m.ChargenError}: ${e.message}`) } } })")
    proc = subprocess.run([NODE, "-e", script, module.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["true: `topK` must be an integer of at least 1 (got 10n)",
                                        'true: `n` must be an integer of at least 1 (got ["2n"])',
                                        "true: `temperature` must be 0 (greedy) or more (got NaN)",
                                        "true: `topP` must be in (0, 1] (got Infinity)",
                                        "true: `unique` must be true or false (got 1n)"], proc.stderr


@needs_node
def test_a_module_draws_under_constraints_at_a_length_of_a_trillion_as_chargen_does(tmp_path):
    """The module's feasibility table, like chargen's, holds only the rows that differ (it built
    length + 2 rows: at 10**12 the engine ran out of memory), and counts for `unique` from the short
    lengths up; the longest length is chargen's, with its words."""
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    cases = [{"n": 6, "seed": 3, "length": 10**12, "endsWith": "a"},
             {"n": 4, "seed": 5, "length": 10**12, "regex": "(ab)*c", "minLen": 5},
             {"n": 3, "seed": 7, "length": 10**12, "contains": "b", "unique": True}]
    got = node_records(module, cases + [{"n": 1, "length": 10**13}, {"n": 3, "length": 10**12, "regex": "ab|ba",
                                                                     "unique": True}])
    for case, js in zip(cases, got):
        assert "error" not in js, (case, js)
        assert_same(js, python_records(ckpt_path, case))
    with pytest.raises(chargen.ChargenError) as python:
        chargen.load(ckpt_path).sample(1, length=10**13)
    assert got[-2]["error"] == "`length` must be an integer between 1 and 1,000,000,000,000 (got 10000000000000)"
    assert str(python.value).startswith("length must be between 1 and 1,000,000,000,000")
    assert got[-1]["error"].startswith("only 2 distinct samples satisfy the constraints")


@needs_node
def test_a_drawing_that_finds_too_few_says_how_rare_its_constraints_are_as_chargen_does(tmp_path):
    module = tmp_path / "names.mjs"
    ckpt = read_checkpoint(checkpoint_path("names"))
    module.write_text(module_text(ckpt, choose_encoding(ckpt)))
    cases = [({"contains": "zzq"}, {"contains": "zzq"}), ({"contains": "zzq", "rejection": True}, {"contains": "zzq", "rejection": True}),
             ({"endsWith": "q", "topK": 1}, {"ends_with": "q", "top_k": 1})]
    errors = [r["error"] for r in node_records(module, [{"n": 3, "seed": 1, **js} for js, _ in cases])]
    model = chargen.load("names")
    for (_, py), error in zip(cases, errors):
        with pytest.raises(chargen.SamplingError) as info:
            list(model.samples(3, seed=1, **py))
        said = [re.search(r" draws(: [^;]+);", m).group(1) for m in (info.value.message, error)]
        assert said[0] == said[1], said
    assert "less than 0.00049" in errors[0] and "rule out every sample" in errors[2]


def test_int8_rows_round_trip_and_auto_choice(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 30)).astype(np.float32)
    q, s = quantize_rows(w)
    snapped = (q.astype(np.float32) * s[:, None]).astype(np.float32)
    assert np.abs(snapped - w).max() <= s.max() / 2 + 1e-7 and np.abs(q).max() == 127
    q2, s2 = quantize_rows(snapped)  # on the grid: found again exactly
    assert np.array_equal((q2.astype(np.float32) * s2[:, None]).astype(np.float32), snapped)
    # a random model: auto measures what int8 costs on its own lines and says so
    ckpt = read_checkpoint(random_model(tmp_path / "m.safetensors", "lstm", 2))
    enc = choose_encoding(ckpt)
    assert enc.enc in ("i8", "f16") and not enc.lossless and enc.loss is not None
    assert enc.enc == "f16" or enc.loss_exported - enc.loss < 0.005
    assert choose_encoding(ckpt, "f32").lossless
    # the bundled models are stored on the int8 grid, their start states too (the base model's 267
    # labels'): their export is lossless and small
    assert choose_encoding(read_checkpoint(checkpoint_path("base"))) == Encoding("i8", True)
    assert choose_encoding(read_checkpoint(checkpoint_path("names"))) == Encoding("i8", True)
    # a start state off the grid stays float32, and the export lossless
    off = read_checkpoint(checkpoint_path("names"))
    off.start_state = [a + np.float32(1e-3) for a in off.start_state]
    assert choose_encoding(off) == Encoding("i8", True, start="f32")
    _, values = encode(ckpt.weights, "f16")
    assert all(v.dtype == np.float32 for v in values.values())


def test_export_command(tmp_path):
    proc = run(["export", "names", "--html", str(tmp_path / "names.html"), "--js", str(tmp_path / "names.mjs"),
                "--checkpoint", str(tmp_path / "same.safetensors")])
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "names.html").read_text()
    assert (tmp_path / "names.html").stat().st_size <= 300 * 1024  # the budget for the names page
    assert "http://" not in page and "https://" not in page  # nothing to load from the network
    assert str(read_checkpoint(checkpoint_path("names")).path.parent) not in page  # nor a path here
    assert read_checkpoint(tmp_path / "same.safetensors").model_config == read_checkpoint(
        checkpoint_path("names")).model_config
    assert_clean_error(run(["export", "names"]), "name what to write")
    assert_clean_error(run(["export", "names", "--js", str(tmp_path / "no" / "x.mjs")]), "does not exist")
    assert_clean_error(run(["export", "names", "--js", str(tmp_path / "x.mjs"), "--weights", "f8"]), "--weights")
    # (the tokenizer is written first: it went to stdout before the error, found by random command lines)
    assert_clean_error(run(["export", "names", "--tokenizer", "-", "--html", str(tmp_path / "x.html"),
                            "--weights", "f8"]), "--weights")
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.mjs").exists()
    # `-` is stdout (a pipeline's `> page.html`, `| gzip`): the same bytes as the file, the note on stderr
    for flag, file in (("--html", "names.html"), ("--js", "names.mjs")):
        piped = run(["export", "names", flag, "-"], cwd=tmp_path)
        assert piped.returncode == 0 and piped.stdout == (tmp_path / file).read_bytes(), piped.stderr
        assert "to stdout" in piped.stderr.decode()
    assert not (tmp_path / "-").exists()
    assert_clean_error(run(["export", "names", "--js", "-", "--html", "-"]), "--js and --html both ask for stdout")
    assert_clean_error(run(["export", "names", "--checkpoint", "-"]), "binary safetensors file; name a file")
    # two outputs on one file, or the exported checkpoint over the one exported: refused before writing
    assert_clean_error(run(["export", "names", "--js", "x.html", "--html", "./x.html"], cwd=tmp_path),
                       "--js and --html both name x.html")
    assert not (tmp_path / "x.html").exists()
    before = (tmp_path / "same.safetensors").read_bytes()
    assert_clean_error(run(["export", str(tmp_path / "same.safetensors"), "--checkpoint", "same.safetensors"],
                           cwd=tmp_path), "is the checkpoint being exported")
    assert (tmp_path / "same.safetensors").read_bytes() == before
    # nor a page, a module or a tokenizer over it, over a run's checkpoints (its last holds the state
    # to resume), or over any safetensors file; --checkpoint over a lone exported one is a re-export
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    for name in ("best.safetensors", "last.safetensors"):
        (run_dir / name).write_bytes(before)
    for flag, target, why in (("--html", "same.safetensors", "is the checkpoint being exported"),
                              ("--tokenizer", "same.safetensors", "is the checkpoint being exported"),
                              ("--checkpoint", "run/last.safetensors", "is the checkpoint of the run"),
                              ("--js", "run/best.safetensors", "is the checkpoint of the run"),
                              ("--js", "other.safetensors", "is a safetensors file")):
        if not (tmp_path / target).exists():
            (tmp_path / target).write_bytes(before)
        assert_clean_error(run(["export", "same.safetensors", flag, target], cwd=tmp_path), f"{flag} {target} {why}")
        assert (tmp_path / target).read_bytes() == before
    assert run(["export", "names", "--checkpoint", "other.safetensors"], cwd=tmp_path).returncode == 0
    # a pipe named as the output (bash's >(gzip > x) is /dev/fd/63): written, never read (reading it to
    # see whether it held a checkpoint waited for ever on its writer, chargen itself)
    import threading

    os.mkfifo(tmp_path / "pipe")
    got = []
    reader = threading.Thread(target=lambda: got.append((tmp_path / "pipe").read_bytes()), daemon=True)
    reader.start()
    assert run(["export", "names", "--js", "pipe"], cwd=tmp_path, timeout=60).returncode == 0
    reader.join(60)
    assert got and got[0] == (tmp_path / "names.mjs").read_bytes()
    assert (tmp_path / "other.safetensors").read_bytes() != before


# --- the page, in Chromium ------------------------------------------------------------------------

CHROMIUM = os.environ.get("CHARGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium to drive: apt-get install chromium (or set CHARGEN_CHROMIUM)")
    from .test_playground import CHROMIUM_ARGS

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_page_draws_the_cli_names_offline_and_matches_numpy(browser, tmp_path):
    ckpt_path = random_model(tmp_path / "m.safetensors", "gru", 2, seed=5)
    html = tmp_path / "m.html"
    html.write_text(page_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 390, "height": 800}, offline=True)  # a phone, no network
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri())
    expect(page.locator("#status")).to_contain_text("Type a prompt")
    assert "WebAssembly SIMD" in page.text_content("#facts")  # the page's CSP lets the kernel compile
    # the playground's controls (one definition), less what only a server does
    assert page.locator("#rejection").count() == 1 and page.locator("#guided").count() == 0
    page.fill("#prompt", "Ma")
    page.fill("#n", "25")
    page.fill("#seed", "42")
    page.press("#prompt", "Enter")  # keyboard: Enter generates
    expect(page.locator("#results tbody tr")).to_have_count(25)
    texts = page.eval_on_selector_all("#results td.sample button", "bs => bs.map(b => b.textContent)")
    expected = python_records(ckpt_path, {"n": 25, "seed": 42, "prompt": "Ma"})
    assert texts == [r["text"] for r in expected]
    page.click("#constraints summary")
    page.fill("#seed", "3")
    # each constraint field in turn (contains: two texts, as the playground takes them), then plain rejection
    for field, value, option in [("#ends_with", "a", {"endsWith": "a"}), ("#contains", "e, r", {"contains": ["e", "r"]}),
                                 ("#regex", "Ma[a-z]*(e|n)", {"regex": "Ma[a-z]*(e|n)"}),
                                 ("#min_len", "7", {"minLen": 7, "rejection": True})]:
        page.fill(field, value)
        page.set_checked("#rejection", "rejection" in option)
        page.click("#go")
        expect(page.locator("#status")).to_contain_text("samples in")
        got = page.eval_on_selector_all("#results td.sample button", "bs => bs.map(b => b.textContent)")
        assert got == [r["text"] for r in python_records(ckpt_path, {"n": 25, "seed": 3, "prompt": "Ma", **option})]
        held = "" if "rejection" in option else r" · the constraints hold about [\d.e-]+ of the model's samples"
        assert re.search(r"25 of \d+ draws kept" + held + "$", page.text_content("#status").split(" · click")[0]), \
            page.text_content("#status")  # as chargen sample's note (plain rejection has no estimate)
        page.fill(field, "")
    page.fill("#ends_with", "Ω")
    page.click("#go")
    expect(page.locator("#status")).to_have_class("muted error")
    assert "not in the model's vocabulary" in page.text_content("#status")
    assert not errors and all(u.startswith(("file:", "blob:", "data:")) for u in requests), (errors, requests)
    context.close()


def _opened(browser, html: Path):
    """An offline context's page of the exported `html`, loaded (its sampler ready), and the list its
    script errors go to."""
    from playwright.sync_api import expect

    context = browser.new_context(offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri())
    expect(page.locator("#status")).to_contain_text("Type a prompt")
    return context, page, errors


def test_a_page_whose_training_lines_hold_html_loads(browser, tmp_path):
    """A list of HTML's lines ("<!--<script>" among them) in the page's data made its parser read on
    past the script that holds them: the page never loaded. Its `novel` still knows them."""
    html_lines = ("<!--<script>x", "<!--<script>", "</script>", "<b>bold</b>")
    ckpt_path = random_model(tmp_path / "m.safetensors", "lstm", 2, more_lines=html_lines)
    html = tmp_path / "m.html"
    html.write_text(page_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    assert "<!--" not in html.read_text()
    from playwright.sync_api import expect

    context, page, errors = _opened(browser, html)
    page.fill("#n", "12")
    page.fill("#seed", "4")
    page.set_checked("#novel", True)
    page.click("#go")
    expect(page.locator("#results tbody tr")).to_have_count(12)
    texts = page.eval_on_selector_all("#results td.sample button", "bs => bs.map(b => b.textContent)")
    assert texts == [r["text"] for r in python_records(ckpt_path, {"n": 12, "seed": 4, "novel": True})]
    assert not errors
    context.close()


def test_a_labelled_page_has_a_label_picker_and_draws_the_cli_names(browser, tmp_path):
    ckpt_path = random_labelled_model(tmp_path / "m.safetensors", inherited=[100, 0, 0, 100])  # adapted: 2 labels its own
    html = tmp_path / "m.html"
    html.write_text(page_text(read_checkpoint(ckpt_path), Encoding("f32", True)))
    from playwright.sync_api import expect

    context, page, errors = _opened(browser, html)
    assert page.is_visible("#label")
    options = page.eval_on_selector_all("#label-list option", "os => os.map(o => o.value)")
    # suggested: the labels it draws with no label (adapted: its own), the languages, territories and
    # kinds the labels are asked by, then the labels
    assert options == ["it_IT:surname", "el_GR:first", "greek", "italian", "spanish", "greece", "italy", "spain",
                       "city", "first", "surname", "it_IT:first", "es_ES:city"]
    facts = " ".join(page.inner_text("#facts").split())
    assert "labels 4 (with no label: it_IT:surname, el_GR:first)" in facts, facts
    page.fill("#label", "it_IT:first=0.3,el_GR:first=0.7")
    page.fill("#n", "20")
    page.fill("#seed", "11")
    page.click("#go")
    expect(page.locator("#results tbody tr")).to_have_count(20)
    texts = page.eval_on_selector_all("#results td.sample button", "bs => bs.map(b => b.textContent)")
    labels = page.eval_on_selector_all("#results td.sample span.label", "ss => ss.map(s => s.textContent)")
    expected = python_records(ckpt_path, {"n": 20, "seed": 11, "label": "it_IT:first=0.3,el_GR:first=0.7"})
    assert texts == [r["text"] for r in expected] and labels == [r["label"] for r in expected]
    # the most likely, under a part of the labels: what chargen's --top lists, the sampling settings hidden
    page.check("input[name=mode][value=top]")
    assert not page.is_visible("#temperature") and not page.is_visible("#unique") and page.is_visible("#label")
    page.fill("#label", "it")
    page.fill("#n", "8")
    page.click("#go")
    expect(page.locator("#status")).to_contain_text("8 most likely in")
    texts = page.eval_on_selector_all("#results td.sample button", "bs => bs.map(b => b.textContent)")
    labels = page.eval_on_selector_all("#results td.sample span.label", "ss => ss.map(s => s.textContent)")
    expected = python_top(ckpt_path, {"n": 8, "label": "it"})
    assert texts == [r["text"] for r in expected] and labels == [r["label"] for r in expected]
    page.check("input[name=mode][value=sample]")
    assert page.is_visible("#temperature")
    page.fill("#label", "xx_XX")
    page.click("#go")
    expect(page.locator("#status")).to_have_class("muted error")
    assert "unknown label 'xx_XX'" in page.text_content("#status")
    assert not errors, errors
    context.close()


@needs_node
def test_wasm_kernel_against_float64(tmp_path):
    """The assembled kernel: gemm to float32 rounding, each vector's products the same bits alone
    as beside another (a state's step must not depend on how states are grouped), sigmoid and tanh
    to about 1 ulp (a wrong constant or opcode in chargen/wasmkernel.py fails this long before the
    sampler tests)."""
    from chargen.wasmkernel import kernel

    (tmp_path / "k.wasm").write_bytes(kernel())
    script = """
const bytes = require("fs").readFileSync(process.argv[1]);
const mem = new WebAssembly.Memory({ initial: 4 });
const k = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { mem } }).exports;
const f = new Float32Array(mem.buffer), N = 4000, out = {};
const xs = Array.from({ length: N }, (_, i) => (i < 6 ? [0, 1e-9, -1e-9, 100, -100, 88.5][i] : Math.sin(i * 7.1) * 25));
for (const [name, ref] of [["sigmoid", (x) => 1 / (1 + Math.exp(-x))], ["tanh", Math.tanh]]) {
  f.set(xs); k[name](0, N);
  out[name] = Math.max(...xs.map((x, i) => Math.abs(f[i] - ref(Math.fround(x)))));
}
const rows = 72, cols = 48, n = 5, x = rows * cols, o = x + n * cols, alone = o + n * rows;
for (let i = 0; i < o; i++) f[i] = Math.cos(i * 0.37);
k.gemm(0, rows, cols, x * 4, n, o * 4);
out.gemm = 0; out.alone = true;
for (let v = 0; v < n; v++) {
  for (let j = 0; j < rows; j++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += f[j * cols + c] * f[x + v * cols + c];
    out.gemm = Math.max(out.gemm, Math.abs(s - f[o + v * rows + j]));
  }
  k.gemm(0, rows, cols, (x + v * cols) * 4, 1, alone * 4);
  for (let j = 0; j < rows; j++) if (f[alone + j] !== f[o + v * rows + j]) out.alone = false;
}
process.stdout.write(JSON.stringify(out));
"""
    proc = subprocess.run([NODE, "-e", script, str(tmp_path / "k.wasm")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    err = json.loads(proc.stdout)
    assert err["sigmoid"] < 1.2e-7 and err["tanh"] < 1.2e-7 and err["gemm"] < 2e-5 and err["alone"], err


@pytest.mark.parametrize("base, name", [("/home/someone/private/base.safetensors", "base"),
                                        ("/home/someone/runs/us-names/best.safetensors", "us-names")])
def test_a_fine_tuned_export_names_its_base_by_name_only(trained_names, base, name):
    ckpt = read_checkpoint(trained_names / "best.safetensors")
    ckpt.info["from"] = {"path": base, "sha256": "0" * 64}
    text = module_text(ckpt, Encoding("f32", True))
    assert "/home/someone" not in text and str(trained_names) not in text and '"path"' not in text
    assert f'"from":{{"name":"{name}"' in text


# Patterns in the syntax chargen compiles (interegular's), and strings to read with them.
REGEXES = ["[A-Z][a-z]*(ab|c)", "a|b|", "(ab)*c?", "[^ab]+", "[a-c1]{2}", "a{1,3}b{,2}c{2,}", "(?:ab|ba)+",
           "(?i)AB[c]", "a(?i:B)c", "(?i:[^a])b", "\\w\\d?\\s*", "\\W+", "[\\w-]+", "[a\\-z]", "[\\d\\s]a",
           "[\\Wb]", ".a.", "a*?b+?", "a*+", "a?+", "(?P<x>ab)c", "\\x41\\061?", "[^]ab]",
           "^ab$", "a\\$", "\\.", "(a|(b|c)d)*", "((a)|b){0,2}", "(?s)a.b",
           # lookahead, with interegular's quirks: a lookahead reaching past the pattern's end pads it with
           # any characters ("a(?!b)": "a" then one character not "b"; "a(?=b)|c": "c" then one more)
           "a(?!b)", "a(?=b)", "a(?=b)b", "a(?=b*)", "(?=A)[A-Z][a-z]+", "(?!Ab)[A-Z][a-z]*", "(?=.*a)(?=.*b)[a-z]+",
           "(?i)(?=.*A)[a-d]+", "(?!.*d)[a-d]{2,3}", "a(?=b)|c", "(a(?=bc))", "(?=[ab]{2})..", "(?!a).*(?=b).",
           "(?:c|(?=a)a)b"]
REGEX_ERRORS = ["a(?#note)b", "(a)\\1", "\\bab", "a**", "a{3,2}", "a(?i)b", "(ab", "[a-", "\\p{L}", "(?m)a", "[z-a]", "[]",
                "[a-z]+(?<=a)", "a(?<=a)", "(?<!b)a", "(x(?=y)|z)y", "(a(?=b))b", "(a(?=b))*", "(?=a)*b", "(?<x>a)",
                # automata too large to build: chargen stops at MAX_STATES, not after hours
                ".*a.{20}", "a{1000000}", "((a{100}){100}){100}", "a{99999999999}",
                # groups nested past what a recursive parser takes
                "(" * 5000 + "a" + ")" * 5000]


def module_accepts(tmp_path: Path, chars: list[str], cases: list[list], texts: list[str]) -> list:
    """For each case, the constructor arguments (endsWith, contains, regex) of the exported module's
    Constraint over `chars` (lengths 1 to 6): whether it accepts each text, or its error message."""
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(random_model(tmp_path / "m.safetensors", "lstm", 2)),
                                  Encoding("f32", True)) + "export { Constraint };\n")
    script = ("import(process.argv[1]).then((m) => {"
              " const [vocab, cases, texts] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              " const out = cases.map(([ends, contains, regex]) => { try {"
              " const c = new m.Constraint(vocab, 0, ends, contains, regex, 1, 6);"
              " return texts.map((t) => { let s = 0; for (const ch of t) { s = s < 0 ? s : c.trans[s * vocab.length"
              " + vocab.indexOf(ch)]; } return s >= 0 && c.accepting(s); }); } catch (e) { return e.message; } });"
              " process.stdout.write(JSON.stringify(out)); })")
    proc = subprocess.run([NODE, "-e", script, module.resolve().as_uri()], input=json.dumps([chars, cases, texts]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def chargen_accepts(constraints, vocab: Vocab, texts: list[str]) -> list[bool]:
    """Whether chargen's automaton for `constraints` (lengths 1 to 6) accepts each text."""
    from chargen.sampling.constraints import Automaton

    automaton = Automaton(constraints, vocab, limit=6)
    accepted = []
    for t in texts:
        s = automaton.start_state
        for ch in t:
            s = s if s < 0 else int(automaton.trans[s, vocab.index[ch]])
        accepted.append(bool(s >= 0 and automaton.accepting[s]))
    return accepted


@needs_node
def test_module_regex_accepts_what_chargen_accepts(tmp_path):
    """The module's regex automaton against chargen's (interegular's), string by string: every string
    up to 4 characters over an alphabet that meets each pattern's corner cases."""
    from itertools import product as strings

    from chargen.sampling.constraints import Constraints

    chars = ["\n", " ", "-", ".", "$", "1", "A", "B", "a", "b", "c", "d", "]", "é"]
    vocab = Vocab(chars)
    texts = ["".join(t) for k in range(5) for t in strings([c for c in chars if c != "\n"], repeat=k)]
    got = module_accepts(tmp_path, chars, [[None, [], p] for p in REGEXES + REGEX_ERRORS], texts)
    for pattern, js in zip(REGEXES, got):
        expected = chargen_accepts(Constraints(regex=pattern), vocab, texts)
        assert isinstance(js, list), (pattern, js)
        assert sum(expected) > 0
        assert js == expected, (pattern, [t for t, a, b in zip(texts, js, expected) if a != b][:10])
    for pattern, js in zip(REGEX_ERRORS, got[len(REGEXES):]):
        with pytest.raises(chargen.ChargenError):  # chargen refuses each too
            chargen_accepts(Constraints(regex=pattern), vocab, texts[:1])
        assert isinstance(js, str) and "`regex`" in js, (pattern, js)


@needs_node
def test_module_texts_to_contain_or_end_with_accept_what_chargen_accepts(tmp_path):
    """The module's KMP automata (websampler.js's kmp) against chargen's (_kmp), through each side's
    product: every string up to 6 characters over three letters, for overlapping texts."""
    from itertools import product as strings

    from chargen.sampling.constraints import Constraints

    chars = ["\n", "a", "b", "c"]
    vocab = Vocab(chars)
    cases = [(None, ["aba"]), ("ab", []), ("abab", []), (None, ["aab", "bb"]), ("bba", ["ab"]), ("aa", ["c"])]
    texts = ["".join(t) for k in range(7) for t in strings("abc", repeat=k)]
    got = module_accepts(tmp_path, chars, [[ends, contains, None] for ends, contains in cases], texts)
    for (ends, contains), js in zip(cases, got):
        expected = chargen_accepts(Constraints(ends_with=ends, contains=tuple(contains)), vocab, texts)
        assert 0 < sum(expected) < len(texts) and js == expected, (ends, contains)


@needs_node
def test_bytes_come_back_whole_from_an_exports_base85():
    """webexport.as_text (Base85, "<" written ".") read back by websampler.js's bytesOf: every length
    of last group, every byte value, the digits that were "<"."""
    from chargen.webexport import _static, as_text

    source = _static("websampler.js")
    reader = source[source.index("const B85 = "): source.index("function halfToFloat")]
    rng = np.random.default_rng(0)
    blobs = [bytes(range(256)), b"", b"\xff" * 7, *(rng.integers(0, 256, size=k, dtype=np.uint8).tobytes() for k in range(1, 14)),
             rng.integers(0, 256, size=5000, dtype=np.uint8).tobytes()]
    texts = [as_text(b) for b in blobs]
    assert sum(t.count(".") for t in texts) > 10 and not any("<" in t for t in texts)
    script = reader + "process.stdout.write(JSON.stringify(JSON.parse(process.argv[1]).map((t) => Array.from(bytesOf(t)))));"
    proc = subprocess.run([NODE, "-e", script, json.dumps(texts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [bytes(b) for b in json.loads(proc.stdout)] == blobs


def test_exported_scripts_lose_only_comments_and_indentation():
    """An export carries static/'s scripts without comments and indentation: safe only while no
    string in them spans lines (a template literal's line could start with //), and a comment after
    code is cut only where it is one ("  // " after code with no slash and no open quote)."""
    from chargen.webexport import _script, _static

    cut = 0
    for name in ["websampler.js", "ui.js", "webpage.js", "webpage-worker.js"]:
        source = _static(name).split("\n")
        assert not [k for k, line in enumerate(source) if line.count("`") % 2 and not line.lstrip().startswith("//")]
        code = [line.strip() for line in source if line.strip() and not line.lstrip().startswith("//")]
        kept = _script(name).splitlines()
        assert len(kept) == len(code)
        for full, line in zip(code, kept):
            rest = full[len(line):]
            assert full.startswith(line) and (not rest or rest.startswith("  // ")), (name, full)
            if rest:
                assert "/" not in line and not any(line.count(q) % 2 for q in "\"'`"), (name, full)
                cut += len(rest)
    assert cut > 1500  # websampler.js's comments after code, ui.js's...


def _decoded_as_javascript(text: str) -> list[str]:
    """websampler.js's decodeLines, with JavaScript's strings: sliced in UTF-16 code units."""
    out, prev = [], b""
    for s in text.split("\n"):
        prev = prev[: 2 * (ord(s[0]) - 48)] + s[1:].encode("utf-16-le")
        out.append(prev.decode("utf-16-le"))
    return out


def test_front_coded_lines_come_back_whole_in_javascripts_strings():
    """The lines an export carries for `novel`, front-coded: long shared prefixes (past MAX_SHARED),
    characters past the Basic Multilingual Plane (two UTF-16 units each: never counted as shared),
    repeats; decoded as JavaScript decodes them, the same distinct lines."""
    from chargen.webexport import MAX_SHARED, front_coded

    lines = ["A" * 60 + "b", "A" * 60 + "c", "A" * 60, "𝔄𝔅x", "𝔄𝔅y", "𝔄", "é𝔄é", "é𝔄f", "emma", "emma", "emily",
             "ZZ", "Z", "x" * (MAX_SHARED + 5) + "1", "x" * (MAX_SHARED + 5) + "2"]
    coded = front_coded(lines)
    assert _decoded_as_javascript(coded) == sorted(set(lines))
    assert len(coded) < len("\n".join(lines)) - 100  # shared prefixes are not written again
    names = make_names(2000, seed=1).splitlines()
    assert _decoded_as_javascript(front_coded(names)) == sorted(set(names))


@needs_node
def test_novel_in_a_module_refuses_the_models_own_greedy_line(tmp_path):
    """The greedy line (temperature 0) among training lines that share long prefixes with it: chargen
    and the module both find it there, so `novel` at temperature 0 draws nothing in either."""
    path = random_model(tmp_path / "m.safetensors", "lstm", 2, seed=5)
    ckpt = read_checkpoint(path)
    greedy = chargen.load(path).sample(1, "Mo", temperature=0)[0]
    lines = [greedy, greedy + "x", greedy[:-1], greedy * 3, "Q" * 50 + greedy] + ckpt.training_lines
    save_checkpoint(path, weights=ckpt.weights, model_config=ckpt.model_config, vocab_json=ckpt.vocab.to_json(),
                    train_config={}, info=ckpt.info, lines_blob=encode_lines(lines), start_state=ckpt.start_state)
    module = tmp_path / "m.mjs"
    module.write_text(module_text(read_checkpoint(path), Encoding("f32", True)))
    got = node_records(module, [{"n": 1, "prompt": "Mo", "temperature": 0, "novel": True},
                                {"n": 1, "prompt": "Mo", "temperature": 0}])
    assert got[1][0]["text"] == greedy  # the module's greedy line is chargen's
    assert "produced only 0 of 1" in got[0]["error"], got[0]
    with pytest.raises(chargen.ChargenError, match="produced only 0 of 1"):
        chargen.load(path).sample(1, "Mo", temperature=0, novel=True)
