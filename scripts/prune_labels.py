"""Drop from a labelled checkpoint the labels its corpus no longer has.

    python scripts/prune_labels.py checkpoints/base.safetensors corpora/many-names.tsv

A label is nothing but its learned start state (chargen.model: each line starts from its label's
row of `start`; the network's weights are shared), so dropping a label's row, with its name, line
count and held-out loss in the checkpoint's info and its lines among the training lines `--novel`
checks, leaves every other label's distribution exactly as it was: same log-probabilities, and
the same samples for a seed under that label. (With no `--label` a model draws its labels in
proportion to their training lines, so those draws move a little.) The checkpoint is rewritten in
place, atomically; nothing else in it changes.

Used once, for the bundled base (checkpoints/README.md): corpora/build.py came to drop the lists
that its rare-character filter had cut to a remnant (5 of Faker's 262 Japanese cities, 1 of its 192
Korean country names), after the base had been trained with them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargen.checkpoint import encode_lines, read_checkpoint, save_checkpoint  # noqa: E402
from chargen.config import ModelConfig  # noqa: E402


def prune(path: Path, corpus: Path) -> list[str]:
    """Rewrite the labelled checkpoint at `path` without the labels no line of the LABEL<TAB>TEXT
    `corpus` has; the labels dropped."""
    ckpt = read_checkpoint(path)
    if not ckpt.labels:
        raise SystemExit(f"{path} has no labels")
    if ckpt.info["labels"].get("inherited") is not None:
        raise SystemExit(f"{path} was adapted from a labelled model: its inherited labels are that model's")
    present = {line.split("\t", 1)[0] for line in corpus.read_text(encoding="utf-8").splitlines()}
    keep = [i for i, name in enumerate(ckpt.labels) if name in present]
    dropped = [name for name in ckpt.labels if name not in present]
    if not dropped:
        return []
    kept_names = [ckpt.labels[i] for i in keep]
    labels = dict(ckpt.info["labels"])
    labels["names"] = kept_names
    labels["lines"] = [labels["lines"][i] for i in keep]
    labels["val_loss"] = {name: labels["val_loss"][name] for name in kept_names if name in labels["val_loss"]}
    weights = dict(ckpt.weights)
    weights["start"] = weights["start"][keep]
    gone = set(dropped)
    lines = [line for line in ckpt.training_lines or [] if line.split("\t", 1)[0] not in gone]
    config = ModelConfig.from_dict({**ckpt.model_config.to_dict(), "n_labels": len(keep)})
    save_checkpoint(path, weights=weights, model_config=config, vocab_json=ckpt.vocab.to_json(),
                    train_config=ckpt.train_config, info={**ckpt.info, "labels": labels},
                    lines_blob=encode_lines(lines) if ckpt.training_lines is not None else None,
                    start_state=[np.asarray(s)[keep] for s in ckpt.start_state])
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("corpus", type=Path, help="the LABEL<TAB>TEXT corpus whose labels the checkpoint keeps")
    args = parser.parse_args()
    dropped = prune(args.checkpoint, args.corpus)
    print(f"dropped {len(dropped)} label(s): {', '.join(dropped) or 'none'}", file=sys.stderr)


if __name__ == "__main__":
    main()
