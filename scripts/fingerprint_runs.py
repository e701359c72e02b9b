"""Fingerprint fixed-seed training runs, to show that a change of code leaves training bit-identical.

    python scripts/fingerprint_runs.py --out before.json            # on the old code
    python scripts/fingerprint_runs.py --out after.json --compare before.json

Each case trains tiny models through the installed `chargen` command on CPU (line-oriented and
prose corpora, LSTM and GRU, fp32 and bf16, a separate validation file, stopped and resumed,
one and two torchrun processes, a run resumed across world sizes) and records a SHA-256 of every
tensor in best.safetensors and last.safetensors (weights, start state, training lines, optimizer
moments, carried hidden state, RNG states), of the resume metadata, of config.json and of every
number in metrics.jsonl. Only what depends on the wall clock is left out: `elapsed` and
`chars_per_sec` in metrics.jsonl and `elapsed` in the resume metadata (and the checkpoint's
`saved_at` and version strings, which are not hashed). bf16 results are comparable only on the
same CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CLOCK_FIELDS = {"elapsed", "chars_per_sec"}
TINY = ["--layers", "2", "--hidden", "32", "--embed", "8", "--batch-size", "8", "--seq-len", "16",
        "--eval-every", "10", "--warmup", "5", "--lr", "1e-2", "--device", "cpu", "--sample-every", "1"]


def make_names(n: int, seed: int) -> str:
    rng = random.Random(seed)
    onsets, vowels, codas = ["b", "d", "k", "l", "m", "n", "r", "s", "t"], ["a", "e", "i", "o"], ["", "n", "r", "l"]
    names: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        names.add(name.capitalize())
    return "\n".join(sorted(sorted(names), key=lambda s: rng.random())) + "\n"


def make_prose(n_lines: int, seed: int) -> str:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog and a cat sat on mat while it rained".split()
    paras = []
    for _ in range(n_lines):
        paras.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + ".")
        if rng.random() < 0.2:
            paras.append("")
    return "\n".join(paras) + "\n"


def chargen(args: list[str], cwd: Path, nproc: int = 1) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    if nproc == 1:
        cmd = [sys.executable, "-m", "chargen", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "chargen", "train", *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{p.stderr.decode()[-3000:]}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def fingerprint(run_dir: Path) -> dict:
    from safetensors import safe_open

    out: dict = {}
    for name in ("best.safetensors", "last.safetensors"):
        with safe_open(str(run_dir / name), framework="numpy") as f:
            meta = f.metadata()
            for key in sorted(f.keys()):
                t = f.get_tensor(key)
                out[f"{name}:{key}"] = f"{t.dtype}{list(t.shape)}:{digest(t.tobytes())}"
            for key in ("model_config", "train_config", "vocab"):
                out[f"{name}:meta.{key}"] = digest(meta[key].encode())
            if "resume" in meta:
                resume = {k: v for k, v in json.loads(meta["resume"]).items() if k not in CLOCK_FIELDS}
                out[f"{name}:meta.resume"] = resume
            info = json.loads(meta["info"])
            for key in ("step", "epoch", "chars_seen", "val_loss", "best_val_loss", "train_chars", "val_chars",
                        "unigram_entropy", "line_oriented", "training_lines", "precision"):
                out[f"{name}:info.{key}"] = info.get(key)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    out["metrics"] = [{k: v for k, v in m.items() if k not in CLOCK_FIELDS} for m in metrics]
    out["config.json"] = json.loads((run_dir / "config.json").read_text())
    return out


def cases(work: Path) -> dict:
    (work / "names.txt").write_text(make_names(600, 3))
    (work / "prose.txt").write_text(make_prose(900, 4))
    (work / "prose-val.txt").write_text(make_prose(80, 5))
    results = {}

    def case(name: str, runs: list[tuple[list[str], int]]) -> None:
        for args, nproc in runs:
            chargen(args, work, nproc)
        results[name] = fingerprint(work / name)
        print(f"  {name}", file=sys.stderr)

    fp32 = ["--precision", "fp32"]
    case("names-lstm", [(["names.txt", "--out", "names-lstm", "--max-steps", "30", "--dropout", "0.1", *TINY, *fp32], 1)])
    case("names-resumed", [
        (["names.txt", "--out", "names-resumed", "--max-steps", "15", "--dropout", "0.1", *TINY, *fp32], 1),
        (["--resume", "names-resumed", "--max-steps", "30"], 1)])
    case("names-gru-bf16", [(["names.txt", "--out", "names-gru-bf16", "--max-steps", "30", "--cell", "gru",
                              "--dropout", "0.1", *TINY, "--precision", "bf16"], 1)])
    case("prose-lstm", [(["prose.txt", "--out", "prose-lstm", "--max-steps", "30", "--dropout", "0.1", *TINY, *fp32], 1)])
    case("prose-resumed", [
        (["prose.txt", "--out", "prose-resumed", "--max-steps", "15", "--dropout", "0.1", *TINY, *fp32], 1),
        (["--resume", "prose-resumed", "--max-steps", "30"], 1)])
    case("prose-valfile-rnn", [(["prose.txt", "--val-file", "prose-val.txt", "--out", "prose-valfile-rnn",
                                 "--max-steps", "30", "--cell", "rnn", *TINY, *fp32], 1)])
    case("prose-epochs", [(["prose.txt", "--out", "prose-epochs", "--epochs", "1.5", *TINY, *fp32,
                            "--batch-size", "32", "--seq-len", "64"], 1)])
    case("names-ddp2", [(["names.txt", "--out", "names-ddp2", "--max-steps", "12", *TINY, *fp32], 2)])
    case("prose-ddp2", [(["prose.txt", "--out", "prose-ddp2", "--max-steps", "12", *TINY, *fp32], 2)])
    case("names-ddp2-then-1", [
        (["names.txt", "--out", "names-ddp2-then-1", "--max-steps", "10", *TINY, *fp32], 2),
        (["--resume", "names-ddp2-then-1", "--max-steps", "20"], 1)])
    case("prose-1-then-ddp2", [
        (["prose.txt", "--out", "prose-1-then-ddp2", "--max-steps", "10", *TINY, *fp32], 1),
        (["--resume", "prose-1-then-ddp2", "--max-steps", "20"], 2)])
    return results


def compare(a: dict, b: dict) -> list[str]:
    diffs = []
    for case in sorted(set(a) | set(b)):
        if case not in a or case not in b:
            diffs.append(f"{case}: only in one of the two")
            continue
        for key in sorted(set(a[case]) | set(b[case])):
            if a[case].get(key) != b[case].get(key):
                diffs.append(f"{case}: {key}: {str(a[case].get(key))[:200]} != {str(b[case].get(key))[:200]}")
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the fingerprints here (JSON)")
    parser.add_argument("--compare", help="a fingerprint file to compare with; exit 1 on any difference")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHARGEN_CACHE_DIR"] = str(Path(tmp) / "cache")
        results = cases(Path(tmp))
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    n = sum(len(v) for v in results.values())
    print(f"{len(results)} cases, {n} fingerprints -> {args.out}")
    if args.compare:
        diffs = compare(json.loads(Path(args.compare).read_text()), results)
        for d in diffs:
            print("DIFF", d)
        print("identical" if not diffs else f"{len(diffs)} differences")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
