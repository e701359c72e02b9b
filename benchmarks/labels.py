#!/usr/bin/env python3
"""A labelled model against the same shape trained without labels, on the base corpus (issue 27).

    python benchmarks/labels.py [--time 10m] [--corpus corpora/many-names.tsv] [--json bench-out/labels.json] \\
                                [-- EXTRA TRAIN FLAGS]
    python benchmarks/labels.py --model base [--accuracy-lines 2000] [--json ...]   # a trained model alone

The labelled corpus (LABEL<TAB>NAME lines, corpora/build.py) is split 90/10 (seed 0) into
train.tsv and test.tsv. Then, through the installed command, one after the other with nothing
else running and the same wall-clock budget and flags: `chargen train train.tsv --labels tab`
and `chargen train train.txt` (the same lines without their labels). On test.tsv:

- held-out loss per label: the labelled model under each line's own label (`chargen eval --label
  L` on that label's lines), the unlabelled one on the same lines; and over all test lines;
- `chargen score --by-label`: the share of test lines whose likeliest label is their own, per
  kind (the part after ':') and overall; and whose likeliest locale (the part before) is right;
  both again, overall and balanced (the mean of each label's or locale's share), under the prior
  `score` uses (the labels' training lines) and under equal priors (every trained label alike);
- per non-Latin label (most of its letters outside Latin script): the share of 200 samples
  (`--label L --seed 1`) written in the label's script, and the share that copy a training line;
- sampling speed: `chargen sample -n 20000` as a command, labelled (all labels) and unlabelled.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import unicodedata
from collections import defaultdict
from pathlib import Path

from common import chargen_cmd, host, print_table, run_measured, write_json


def script(text: str) -> str:
    """The script most letters of `text` are in (LATIN, GREEK, ARABIC, ...)."""
    names = [unicodedata.name(c, "").split(" ")[0] for c in text if c.isalpha()]
    return max(set(names), key=names.count) if names else ""


def split(lines: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    order = random.Random(seed).sample(lines, len(lines))
    n_test = round(len(order) * 0.1)
    return order[n_test:], order[:n_test]


def script_shares(cg: list[str], model: str, by_label: dict[str, list[str]], training: set[str], n: int = 200) -> list[dict]:
    """Per non-Latin label (most of its letters outside Latin script): the share of n samples
    (`--label L --seed 1`) written in the label's script, and the share that copy a training line."""
    rows = []
    for label, texts in sorted(by_label.items()):
        own = script("".join(texts))
        if own in ("LATIN", ""):
            continue
        out = run_measured([*cg, "sample", "-c", model, "--label", label, "-n", str(n), "--seed", "1"])[0] \
            .stdout.decode().splitlines()
        rows.append({"label": label, "script": own, "in_script": sum(script(s) == own for s in out) / len(out),
                     "copies": sum(s in training for s in out) / len(out)})
    return rows


def print_scripts(rows: list[dict]) -> None:
    print_table("non-Latin labels: 200 samples each", ["label", "script", "in its script", "copies a training line"],
                [[r["label"], r["script"], f"{r['in_script']:.1%}", f"{r['copies']:.1%}"] for r in rows])


def by_label_accuracy(cg: list[str], model: str, trained: list[str], test: list[str], work: Path) -> tuple[dict, float, dict]:
    """`chargen score MODEL --by-label` on test's LABEL<TAB>NAME lines: the share whose likeliest
    label is their own, per kind (the part after ':') and "all"; the share whose locale is right;
    and both, overall and balanced (the mean over labels, or locales, of each one's share), under
    each prior: the labels' training lines (what score prints) and equal (every one of `trained`, the
    labels with training lines, alike)."""
    (work / "test.txt").write_text("".join(x.split("\t", 1)[1] + "\n" for x in test), encoding="utf-8")
    scored = run_measured([*cg, "score", model, str(work / "test.txt"), "--by-label", "--format", "jsonl",
                           "--skip-unknown"])[0].stdout.decode().splitlines()
    gold = [x.split("\t", 1)[0] for x in test]
    records = [json.loads(r) for r in scored]
    guesses = {"lines": [r.get("likeliest") or "" for r in records],
               "equal": [max(trained, key=lambda k: r["by_label"][k]) if r.get("by_label") else "" for r in records]}
    hits: dict[str, list[int]] = defaultdict(list)
    for label, guess in zip(gold, guesses["lines"]):
        hits[label.split(":")[-1]].append(guess == label)
    accuracy = {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}
    accuracy["all"] = sum(sum(v) for v in hits.values()) / len(test)
    priors = {prior: shares(gold, guess) for prior, guess in guesses.items()}
    return accuracy, priors["lines"]["locale"], priors


def trained_labels(ckpt) -> list[str]:
    """A checkpoint's labels that have training lines (one with none has nothing to draw)."""
    return [name for name, count in zip(ckpt.labels, ckpt.label_counts) if count]


def shares(gold: list[str], guess: list[str]) -> dict:
    """The share of right guesses of the label and of its locale (the part before ':'): overall,
    and balanced (the mean over the true labels, or locales, of each one's share)."""
    out = {}
    for what, part in (("label", lambda x: x), ("locale", lambda x: x.split(":")[0])):
        right: dict[str, list[bool]] = defaultdict(list)
        for g, y in zip(guess, gold, strict=True):
            right[part(y)].append(part(g) == part(y))
        out[what] = sum(sum(v) for v in right.values()) / len(gold)
        out[f"{what}, balanced"] = statistics.fmean(sum(v) / len(v) for v in right.values())
    return out


def held_out_lines(ckpt, corpus: Path) -> list[str]:
    """The LABEL<TAB>NAME lines a labelled run held out of `corpus` (whole lines only), split again
    as `chargen train --labels tab` split it: its seed and validation share from the checkpoint."""
    from types import SimpleNamespace

    from chargen.training.data import _labelled_split
    from chargen.training.labels import read_labelled

    tc = ckpt.train_config
    labelled = read_labelled([str(corpus)], "tab")
    train, val, _, val_labels, _ = _labelled_split(labelled.text(), labelled.labels,
                                                    SimpleNamespace(seed=tc["seed"], val_fraction=tc["val_fraction"]))
    pairs = list(zip(val_labels.tolist(), val.split("\n")[:-1], strict=True))
    if not train.endswith("\n"):
        pairs = pairs[1:]  # the first is the tail of a line cut in two
    return [f"{labelled.labels.names[k]}\t{text}" for k, text in pairs]


def model_only(cg: list[str], model: str, lines: list[str], corpus: Path, accuracy_lines: int, out: Path) -> None:
    """--model: a trained labelled model (the bundled base): the script and copy shares of its
    samples, and score --by-label's accuracy on (a seeded sample of) the lines its run held out."""
    import chargen

    ckpt = chargen.load(model).checkpoint
    trained_on = ckpt.info.get("training_lines")
    if trained_on not in (None, len(lines)):  # (its held-out lines are a seeded split of exactly those lines)
        raise SystemExit(f"{corpus} has {len(lines):,} lines, the corpus {model} was trained on {trained_on:,}: its "
                         f"held-out lines cannot be split again from it; pass that corpus with --corpus (the bundled "
                         f"base's: git show 3c688e7:corpora/many-names.tsv)")
    trained = trained_labels(ckpt)
    drawn = set(trained)
    by_label: dict[str, list[str]] = defaultdict(list)
    for x in lines:
        label, text = x.split("\t", 1)
        if label in drawn:
            by_label[label].append(text)
    rows = script_shares(cg, model, by_label, {x.split("\t", 1)[1] for x in lines})
    known = set(ckpt.labels)  # (a corpus may hold labels the model was pruned of: scripts/prune_labels.py)
    test = [x for x in held_out_lines(ckpt, corpus) if x.split("\t", 1)[0] in known]
    test = random.Random(0).sample(test, min(accuracy_lines, len(test)))
    with tempfile.TemporaryDirectory() as work:
        accuracy, locale, priors = by_label_accuracy(cg, model, trained, test, Path(work))
    h = host()
    print(f"{model} ({h['cpu']}, {h['cpu_flags']}, commit {h['commit']})")
    print_scripts(rows)
    print_accuracy(accuracy, locale, priors, len(test))
    write_json(out, {"model": model, "scripts": rows, "accuracy": accuracy, "locale_accuracy": locale,
                     "priors": priors, "accuracy_lines": len(test)})


def print_accuracy(accuracy: dict, locale: float, priors: dict, n: int) -> None:
    print_table(f"score --by-label on {n:,} held-out lines: the likeliest label is the line's own", ["kind", "accuracy"],
                [[k, f"{v:.1%}"] for k, v in accuracy.items()] + [["locale", f"{locale:.1%}"]])
    columns = list(priors["lines"])
    print_table("the same lines under each prior (balanced: the mean of each label's or locale's share)",
                ["prior", *columns], [[prior, *(f"{v[c]:.1%}" for c in columns)] for prior, v in priors.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="10m")
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent.parent / "corpora" / "many-names.tsv")
    ap.add_argument("--json", type=Path, default=Path("bench-out/labels.json"))
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--model", help="measure only this trained labelled model (e.g. base): script and copy shares, "
                                    "and score --by-label's accuracy on the lines its run held out of --corpus (the "
                                    "corpus as it was trained on, to split it again: the bundled base's is "
                                    "corpora/many-names.tsv of commit 3c688e7)")
    ap.add_argument("--accuracy-lines", type=int, default=2000, help="with --model: held-out lines to classify")
    ap.add_argument("extra", nargs="*", help="flags passed on to both chargen train (after --)")
    args = ap.parse_args()
    cg = chargen_cmd()
    lines = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line]
    if args.model:
        return model_only(cg, args.model, lines, args.corpus, args.accuracy_lines, args.json)
    train, test = split(lines)
    in_train = {x.split("\t", 1)[0] for x in train}
    test = [x for x in test if x.split("\t", 1)[0] in in_train]  # (a label the split left no training line to)
    work = args.work or Path(tempfile.mkdtemp(prefix="chargen-labels-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.tsv").write_text("".join(x + "\n" for x in train), encoding="utf-8")
    (work / "train.txt").write_text("".join(x.split("\t", 1)[1] + "\n" for x in train), encoding="utf-8")
    by_label: dict[str, list[str]] = defaultdict(list)
    for x in test:
        label, text = x.split("\t", 1)
        by_label[label].append(text)
    runs = {}
    for name, corpus, flags in (("labelled", "train.tsv", ["--labels", "tab"]), ("unlabelled", "train.txt", [])):
        out = work / name
        _, wall, rss = run_measured([*cg, "train", str(work / corpus), *flags, "--time", args.time, "--from", "none",
                                     "--out", str(out), "--overwrite", "--quiet", *args.extra], capture=False)
        info = json.loads(run_measured([*cg, "info", str(out), "--json"])[0].stdout)
        runs[name] = {"dir": out, "wall": wall, "rss_mb": rss, "best_val_loss": info["best_val_loss"],
                      "steps": info["steps"], "model": info["model"]}
        print(f"{name}: {info['steps']:,} steps in {wall:.0f} s, best val {info['best_val_loss']:.4f}", file=sys.stderr)

    import chargen  # in-process for the per-label losses: hundreds of labels

    labelled, unlabelled = chargen.load(str(runs["labelled"]["dir"])), chargen.load(str(runs["unlabelled"]["dir"]))
    per_label = []
    for label, texts in sorted(by_label.items()):
        text = "".join(t + "\n" for t in texts)
        with_label = labelled.eval(text, label=label, skip_unknown=True)
        without = unlabelled.eval(text, lines=True, skip_unknown=True)
        per_label.append({"label": label, "lines": len(texts), "chars": with_label["chars"],
                          "labelled": with_label["loss"], "unlabelled": without["loss"]})
    chars = sum(r["chars"] for r in per_label)
    overall = {k: sum(r[k] * r["chars"] for r in per_label) / chars for k in ("labelled", "unlabelled")}

    accuracy, locale, priors = by_label_accuracy(cg, str(runs["labelled"]["dir"]), trained_labels(labelled.checkpoint),
                                                 test, work)

    scripts = script_shares(cg, str(runs["labelled"]["dir"]), by_label, {x.split("\t", 1)[1] for x in train})

    speed = {}
    for name in ("labelled", "unlabelled"):
        walls = [run_measured([*cg, "sample", "-c", str(runs[name]["dir"]), "-n", "20000", "--seed", "1"],
                              capture=False)[1] for _ in range(3)]
        speed[name] = 20000 / statistics.median(walls)

    h = host()
    print_table(f"labelled vs unlabelled, {args.time} each ({h['cpu']}, {h['cpu_flags']}, {h['cpus']} CPUs, "
                f"commit {h['commit']})", ["", "labelled", "unlabelled"],
                [["best val (own split)", f"{runs['labelled']['best_val_loss']:.4f}",
                  f"{runs['unlabelled']['best_val_loss']:.4f}"],
                 ["test loss, all lines", f"{overall['labelled']:.4f}", f"{overall['unlabelled']:.4f}"],
                 ["labels better / all", f"{sum(r['labelled'] < r['unlabelled'] for r in per_label)} / {len(per_label)}", ""],
                 ["steps", f"{runs['labelled']['steps']:,}", f"{runs['unlabelled']['steps']:,}"],
                 ["sample -n 20000, names/s", f"{speed['labelled']:,.0f}", f"{speed['unlabelled']:,.0f}"]])
    print_accuracy(accuracy, locale, priors, len(test))
    print_scripts(scripts)
    write_json(args.json, {"time": args.time, "runs": {k: {**v, "dir": str(v["dir"])} for k, v in runs.items()},
                           "per_label": per_label, "overall": overall, "accuracy": accuracy,
                           "locale_accuracy": locale, "priors": priors, "scripts": scripts, "names_per_s": speed})


if __name__ == "__main__":
    main()
