#!/usr/bin/env python3
"""What chargen learns in a fixed time with default settings: the 5-minute quality targets.

    python benchmarks/quality.py [--time 5m] [--data ../shared/data] [--corpora tinyshakespeare.txt names.txt]
                                 [--json bench-out/quality.json] [-- EXTRA TRAIN FLAGS]

Trains with no flags but the corpus and the time budget (so the automatic sizes, measured on
this machine, are what is measured), through the installed `chargen` command, one run after the
other with nothing else running, and prints per corpus: the sizes chosen and what was measured
to choose them, characters seen, the best validation loss against the target for this CPU, why
the run stopped, peak resident memory, and the validation curve. Flags after `--` go to every
`chargen train` (to try a candidate default at equal wall time). Takes up to len(corpora) x --time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, chargen_cmd, host, print_table, run_measured, write_json  # noqa: E402

# (target with bf16 matrix units or a GPU, target on a CPU without them, reference)
TARGETS = {
    "tinyshakespeare.txt": (1.45, 1.50, "char-rnn.pytorch 2x100 GRU 1.630, nanoGPT CPU recipe 1.654, "
                                        "word_language_model 2x512 LSTM 1.954 (5 min, AMX machine)"),
    "names.txt": (1.90, 1.90, "makemore transformer 1.971, makemore GRU 1.995 (5 min); ~1.92 after long training"),
}


def has_bf16_units() -> bool:
    flags = host()["cpu_flags"].split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="5m")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--corpora", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    ap.add_argument("--json", type=Path, default=Path("bench-out/quality.json"))
    ap.add_argument("extra", nargs="*", help="flags passed on to chargen train (after --)")
    args = ap.parse_args()
    rows = []
    for name in args.corpora:
        with_units, without, reference = TARGETS[name]
        corpus = args.data / name
        if not corpus.exists():
            raise SystemExit(f"missing {corpus}; pass --data DIR")
        run_dir = args.out / corpus.stem
        cmd = [*chargen_cmd(), "train", str(corpus), "--time", args.time, "--out", str(run_dir), "--overwrite",
               *args.extra]
        proc, wall, rss = run_measured(cmd, env={**os.environ, "COLUMNS": "200"})  # summary rows unwrapped
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best = min(metrics, key=lambda m: m["val_loss"])
        config = json.loads((run_dir / "config.json").read_text())
        m, t = config["model"], config["train"]
        auto = config.get("auto") or {}
        target = with_units if config["device"] != "cpu" or has_bf16_units() else without
        stopped = next((line.split("stopped", 1)[1].strip(" │|") for line in proc.stderr.decode().splitlines()
                        if "stopped" in line), "")
        rows.append({
            "corpus": name, "model": f"{m['layers']}x{m['hidden']} {m['cell']}, embed {m['embed']}, dropout {m['dropout']}",
            "batch": f"{t['batch_size']} x {t['seq_len']}, lr {t['lr']:g}", "precision": config["precision"],
            "device": config["device"], "why": auto.get("why", ""), "measured": auto.get("measured", []),
            "probe_seconds": auto.get("probe_seconds"), "best_val_loss": best["val_loss"], "best_step": best["step"],
            "steps": metrics[-1]["step"], "chars_seen": metrics[-1]["chars_seen"],
            "chars_per_sec": metrics[-1]["chars_per_sec"], "target": target, "met": best["val_loss"] <= target,
            "stopped": stopped, "reference": reference, "wall_s": round(wall, 1), "peak_rss_mb": round(rss),
            "curve": [(r["step"], r["chars_seen"], r["elapsed"], r["val_loss"]) for r in metrics],
            "extra_flags": args.extra,
        })

    h = host()
    print_table(f"chargen quality, --time {args.time}, default settings{' + ' + ' '.join(args.extra) if args.extra else ''}"
                f" ({h['cpu']}, {h['cpu_flags'] or 'no AVX'}, {h['cpus']} CPUs, commit {h['commit']})",
                ["corpus", "sizes (auto)", "chars/s", "chars seen", "best val", "target", "met", "stopped", "RSS MB"],
                [[r["corpus"], f"{r['model']}; {r['batch']}; {r['device']} {r['precision']}",
                  f"{r['chars_per_sec']:,.0f}", f"{r['chars_seen'] / 1e6:.1f}M",
                  f"{r['best_val_loss']:.4f} @ {r['best_step']:,}", f"{r['target']:.2f}", "yes" if r["met"] else "NO",
                  r["stopped"], str(r["peak_rss_mb"])] for r in rows])
    for r in rows:
        rates = ", ".join(f"{x['shape']} {x['chars_per_sec']:,.0f}" for x in r["measured"])
        print(f"{r['corpus']}: measured {rates or '-'} chars/s in {r['probe_seconds']} s; {r['why']}")
        print("  curve (step, chars, s, val): " + "  ".join(f"{s}:{v:.3f}" for s, _, _, v in r["curve"]))
    write_json(args.json, {"time": args.time, "rows": rows})


if __name__ == "__main__":
    main()
