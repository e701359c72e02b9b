#!/usr/bin/env python3
"""Training throughput: chargen's whole training loop against a bare PyTorch loop of the same shapes.

    python benchmarks/train_speed.py [--quick] [--seconds 4] [--json bench-out/train_speed.json]

For each model (layers 1-3 x hidden 128/256/512/1024; --quick: layers 1-2 x hidden 128-512) and
precision (fp32, bf16 autocast), batch 64 x seq-len 128 on tinyshakespeare:
- "bare": embedding + nn.LSTM + linear + AdamW, the state carried and detached, nothing else;
- "chargen": chargen.training.train with a time budget, so data windows, the schedule, progress
  reporting, NaN checks, one evaluation and the checkpoints it writes are all counted.
Both run in this one process, back to back, so the ratio is fair on a noisy machine. The FLOP
rate is 6 x matmul weights x chars/s, against the machine's measured 2048^2 GEMM rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chargen.config import ModelConfig, TrainConfig
from chargen.data import Corpus
from chargen.model import CharRNN, detach_state, matmul_weights
from chargen.training import autocast, train

HERE = Path(__file__).resolve().parent


def gemm_rate(dtype: torch.dtype) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 2048**3 / (time.perf_counter() - t)


def bare_loop(cfg: ModelConfig, ids: torch.Tensor, batch: int, seq: int, precision: str, seconds: float) -> float:
    torch.manual_seed(0)
    model = CharRNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    length = ids.numel() // batch
    streams = ids[: batch * length].view(batch, length)
    state, k, steps = None, 0, 0
    device = torch.device("cpu")
    t0 = None
    while True:
        if (k + 1) * seq + 1 > length:
            k, state = 0, None
        x = streams[:, k * seq : (k + 1) * seq].long()
        y = streams[:, k * seq + 1 : (k + 1) * seq + 1].long()
        with autocast(device, precision):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = detach_state(state)
        k += 1
        steps += 1
        if t0 is None:
            if steps == 2:  # two warm-up steps, then the clock starts
                t0, steps = time.perf_counter(), 0
        elif time.perf_counter() - t0 >= seconds:
            return steps * batch * seq / (time.perf_counter() - t0)


def chargen_loop(text: str, model_options: dict, batch: int, seq: int, precision: str, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(batch_size=batch, seq_len=seq, time=seconds, eval_every=10**9, lr=1e-3,
                             sample_every=0, eval_chars=20_000)
        r = train(Corpus(text=text, name="bench", sources=["tinyshakespeare"]), config, model_options,
                  out_dir=Path(tmp) / "run", precision=precision)
        return r.chars_seen / r.elapsed, r.best_val_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt")
    ap.add_argument("--json", type=Path, default=Path("bench-out/train_speed.json"))
    args = ap.parse_args()
    text = args.data.read_text(encoding="utf-8")
    from chargen.tokenizer import Vocab

    vocab = Vocab.from_text(text)
    ids = torch.from_numpy(vocab.encode(text).astype("int64"))
    peak = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    layers_grid = (1, 2) if args.quick else (1, 2, 3)
    hidden_grid = (128, 256, 512) if args.quick else (128, 256, 512, 1024)
    rows = []
    for layers in layers_grid:
        for hidden in hidden_grid:
            for precision in ("fp32", "bf16"):
                opts = {"layers": layers, "hidden": hidden, "embed": 64, "dropout": 0.0}
                cfg = ModelConfig(vocab_size=len(vocab), **opts)
                bare = bare_loop(cfg, ids, 64, 128, precision, args.seconds)
                ours, val = chargen_loop(text, opts, 64, 128, precision, args.seconds)
                flops = 6 * matmul_weights(cfg)
                rows.append({"layers": layers, "hidden": hidden, "precision": precision, "bare_chars_per_sec": bare,
                             "chargen_chars_per_sec": ours, "ratio": ours / bare, "val_loss": val,
                             "gflops": flops * ours / 1e9, "peak_gflops": peak[precision] / 1e9})
                print(f"{layers}x{hidden} {precision}: bare {bare:,.0f}  chargen {ours:,.0f}  ratio {ours / bare:.3f}",
                      file=sys.stderr, flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chargen training throughput, batch 64 x 128, {args.seconds:g} s each "
                        f"({platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__})")
    for col in ("config", "bare chars/s", "chargen chars/s", "chargen / bare", "val loss", "GFLOP/s", "% of GEMM peak"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        table.add_row(f"{r['layers']}x{r['hidden']} {r['precision']}", f"{r['bare_chars_per_sec']:,.0f}",
                      f"{r['chargen_chars_per_sec']:,.0f}", f"{r['ratio']:.3f}", f"{r['val_loss']:.3f}",
                      f"{r['gflops']:.1f}", f"{100 * r['gflops'] / r['peak_gflops']:.0f}%")
    Console(width=140).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                     "torch": torch.__version__, "peak_gflops": {k: v / 1e9 for k, v in peak.items()},
                                     "rows": rows}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
