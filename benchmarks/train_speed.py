#!/usr/bin/env python3
"""Training throughput: chargen's training loop against a bare PyTorch loop of the same shapes.

    python benchmarks/train_speed.py [--quick] [--seconds 3] [--run-steps 200] [--run-configs 256:fp32,512:bf16]
                                     [--device cpu|cuda] [--batch 64] [--hidden-grid 128,256] [--dropout 0]
                                     [--skip-grid] [--skip-runs] [--json bench-out/train_speed.json]

Two tables, batch 64 x seq-len 128 on tinyshakespeare, everything in this one process and back
to back, so the ratios are fair on a noisy machine:

1. The grid (layers 1-3 x hidden 128/256/512/1024 x fp32/bf16; --quick: 1-2 x 128-512): steady
   per-step speed. "bare" is embedding + nn.LSTM + linear + AdamW with the state carried and
   detached, and nothing else; "chargen" is chargen.training.train itself (its data windows,
   schedule, progress reporting and NaN checks), timed over the same number of steps after
   the same warm-up.
2. Whole runs (--run-configs, default 2x256 fp32): wall time of chargen.training.train from call
   to return, at the default evaluation cadence (--run-steps 200 = one evaluation of up to
   200,000 validation characters every 200 steps, with its preview sample and two checkpoints),
   so start-up, the step-0 checkpoint, the start-of-line state, evaluation, metrics and final
   checkpoints all count, against the bare loop doing the same steps. "outside steps" is the
   wall time less `steps` typical (median) step times of the same run: the share spent on
   everything but training steps, which needs no second loop to agree. Start-up is paid once per
   run: over longer runs the ratio only gets closer to 1. With both 512:fp32 and 512:bf16 in the
   list, the rows also compare bf16 with fp32 after the same number of characters.
   (A 2x512 fp32 run of 200 steps takes about 5 minutes on 2 cores, twice with its bare loop.)

FLOP rate = 6 x matmul weights x chars/s, against the measured 2048^2 GEMM rate of the dtype
(8192^2 on a GPU, fp32 there with TF32 allowed, as cuDNN runs an fp32 LSTM by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chargen.config import ModelConfig, TrainConfig
from chargen.training.ingest import EncodedCorpus
from chargen.model import CharRNN, detach_state
from chargen.training.callbacks import TrainCallbacks
from chargen.training.device import autocast
from chargen.training.loop import train

from common import DATA, gemm_rate, print_table, write_json

BATCH, SEQ = 64, 128
WARMUP = 2


def bare_loop(cfg: ModelConfig, ids: torch.Tensor, precision: str, *, device: torch.device, batch: int = BATCH,
              seconds: float = 0.0, steps: int = 0, synced: bool = False) -> tuple[int, float]:
    """The floor: (steps timed, seconds). Runs WARMUP steps, then `steps` steps or for `seconds`.
    `synced`: wait for the device at every step (reading the loss), as a loop that checks each
    step's loss on the host does; on a GPU the difference is what such a check costs."""
    torch.manual_seed(0)
    model = CharRNN(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    length = ids.numel() // batch
    streams = ids[: batch * length].view(batch, length).to(device)
    state, k, done = None, 0, 0
    t0 = 0.0
    while True:
        if (k + 1) * SEQ + 1 > length:
            k, state = 0, None
        x = streams[:, k * SEQ : (k + 1) * SEQ].long()
        y = streams[:, k * SEQ + 1 : (k + 1) * SEQ + 1].long()
        with autocast(device, precision):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = detach_state(state)
        if synced:
            loss.item()
        k += 1
        done += 1
        if not t0 and done == WARMUP:
            sync(device)
            t0, done = time.perf_counter(), 0
        elif t0:
            elapsed = time.perf_counter() - t0
            if (steps and done >= steps) or (not steps and elapsed >= seconds and done >= 2):
                sync(device)
                return done, time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(TrainCallbacks):
    """Times the loop from the start of step WARMUP to the start of the last step."""

    def __init__(self, batch: int = BATCH) -> None:
        self.marks: dict[int, float] = {}
        self.batch = batch

    def should_stop(self, step: int) -> bool:
        self.marks[step] = time.perf_counter()
        return False

    def rate(self) -> float:
        first, last = WARMUP, max(self.marks)
        return (last - first) * self.batch * SEQ / (self.marks[last] - self.marks[first])


def chargen_run(corpus: EncodedCorpus, opts: dict, precision: str, steps: int, *, eval_every: int,
                clock: StepClock | None = None, device: str = "cpu", batch: int = BATCH):
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(batch_size=batch, seq_len=SEQ, max_steps=steps, eval_every=eval_every, lr=3e-3,
                             warmup=min(100, steps // 4), device=device)
        t = time.perf_counter()
        result = train(corpus, config, opts, out_dir=Path(tmp) / "run", precision=precision, callbacks=clock)
        return result, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller grid and shorter runs")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per grid row (bare loop)")
    ap.add_argument("--run-steps", type=int, default=200, help="steps per whole-run row")
    ap.add_argument("--run-configs", default="256:fp32", help="whole runs, HIDDEN:PRECISION, comma-separated (2 layers)")
    ap.add_argument("--eval-every", type=int, default=TrainConfig().eval_every, help="evaluation cadence of whole runs")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=BATCH, help="streams per step (the grid and the runs)")
    ap.add_argument("--hidden-grid", default=None, help="the grid's hidden sizes, comma-separated")
    ap.add_argument("--dropout", type=float, default=0.0, help="the grid's dropout (between layers and on the output)")
    ap.add_argument("--data", type=Path, default=DATA / "tinyshakespeare.txt")
    ap.add_argument("--json", type=Path, default=Path("bench-out/train_speed.json"))
    args = ap.parse_args()
    text = args.data.read_text(encoding="utf-8")
    corpus = EncodedCorpus.from_text(text, "tinyshakespeare", [str(args.data)])
    ids = torch.from_numpy(corpus.ids.astype("int64"))
    device, batch = torch.device(args.device), args.batch
    gpu = device.type == "cuda"
    n = 8192 if gpu else 2048  # a GPU needs a large product to reach its matrix rate
    tf32 = gpu and torch.backends.cudnn.allow_tf32  # cuDNN runs an fp32 LSTM on TF32 tensor cores
    peak = {"fp32": gemm_rate(torch.float32, args.device, n, tf32=tf32), "bf16": gemm_rate(torch.bfloat16, args.device, n)}
    print(f"GEMM {n}^2 on {args.device}: fp32{' (TF32, as cuDNN runs the LSTM)' if tf32 else ''} "
          f"{peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s", file=sys.stderr)

    grid = []
    if not args.skip_grid:
        layers_grid = (1, 2) if args.quick else (1, 2, 3)
        hidden_grid = (128, 256, 512) if args.quick else (128, 256, 512, 1024)
        if args.hidden_grid:
            hidden_grid = tuple(int(h) for h in args.hidden_grid.split(","))
        for layers in layers_grid:
            for hidden in hidden_grid:
                for precision in ("fp32", "bf16"):
                    opts = {"layers": layers, "hidden": hidden, "embed": 64, "dropout": args.dropout}
                    cfg = ModelConfig(vocab_size=len(corpus.vocab), **opts)
                    steps, secs = bare_loop(cfg, ids, precision, device=device, batch=batch, seconds=args.seconds)
                    bare = steps * batch * SEQ / secs
                    synced = None
                    if gpu:
                        s_steps, s_secs = bare_loop(cfg, ids, precision, device=device, batch=batch, steps=steps,
                                                    synced=True)
                        synced = s_steps * batch * SEQ / s_secs
                    clock = StepClock(batch)
                    chargen_run(corpus, opts, precision, WARMUP + steps + 1, eval_every=10**9, clock=clock,
                                device=args.device, batch=batch)
                    ours = clock.rate()
                    flops = 6 * cfg.matmul_weights
                    row = {"layers": layers, "hidden": hidden, "precision": precision, "steps": steps,
                           "bare_chars_per_sec": bare, "bare_synced_chars_per_sec": synced,
                           "chargen_chars_per_sec": ours, "ratio": ours / bare,
                           "gflops": flops * ours / 1e9, "peak_gflops": peak[precision] / 1e9}
                    grid.append(row)
                    print(f"{layers}x{hidden} {precision}: bare {bare:,.0f}  chargen {ours:,.0f}  "
                          f"ratio {ours / bare:.3f}", file=sys.stderr, flush=True)
        print_table(
            f"1. steady training speed on {args.device}, batch {batch} x {SEQ}, dropout {args.dropout}, "
            "chargen's loop vs a bare loop, same steps"
            + (" (bare synced: the bare loop waiting for the GPU at every step)" if gpu else ""),
            ["config", "steps", "bare chars/s", *(["bare synced"] if gpu else []), "chargen chars/s", "chargen / bare",
             "GFLOP/s", "% of GEMM peak"],
            [[f"{r['layers']}x{r['hidden']} {r['precision']}", str(r["steps"]), f"{r['bare_chars_per_sec']:,.0f}",
              *([f"{r['bare_synced_chars_per_sec']:,.0f}"] if gpu else []),
              f"{r['chargen_chars_per_sec']:,.0f}", f"{r['ratio']:.3f}", f"{r['gflops']:.1f}",
              f"{100 * r['gflops'] / r['peak_gflops']:.1f}%"] for r in grid])

    runs = []
    if not args.skip_runs:
        plan = []
        for item in args.run_configs.split(","):
            hidden, precision = item.split(":")
            plan.append((int(hidden), precision, args.run_steps))
        for hidden, precision, steps in plan:
            opts = {"layers": 2, "hidden": hidden, "embed": 64, "dropout": 0.0}
            cfg = ModelConfig(vocab_size=len(corpus.vocab), **opts)
            clock = StepClock(batch)
            result, wall = chargen_run(corpus, opts, precision, steps, eval_every=args.eval_every, clock=clock,
                                       device=args.device, batch=batch)
            # What the run spends outside its training steps (start-up, evaluation, checkpoints,
            # the sample): the wall time less `steps` typical steps. Unlike the ratio to the bare
            # loop, this share does not depend on two separately timed loops agreeing.
            marks = [clock.marks[i] for i in sorted(clock.marks)]
            typical = statistics.median(b - a for a, b in zip(marks, marks[1:]))
            outside = max(0.0, wall - steps * typical)
            # The bare loop does the same steps (its warm-up steps counted too).
            bare_steps, bare_secs = bare_loop(cfg, ids, precision, device=device, batch=batch, steps=steps - WARMUP)
            bare_wall = bare_secs * steps / bare_steps  # warm-up steps cost about as much as the others
            chars = steps * batch * SEQ
            row = {"layers": 2, "hidden": hidden, "precision": precision, "steps": steps, "chars": chars,
                   "chargen_wall": wall, "bare_wall": bare_wall, "chargen_chars_per_sec": chars / wall,
                   "bare_chars_per_sec": chars / bare_wall, "ratio": bare_wall / wall,
                   "val_loss": result.best_val_loss, "gflops": 6 * cfg.matmul_weights * chars / wall / 1e9,
                   "typical_step": typical, "outside_steps": outside, "outside_share": outside / wall}
            runs.append(row)
            print(f"run 2x{hidden} {precision}: chargen {wall:.1f}s  bare {bare_wall:.1f}s  "
                  f"outside the steps {outside:.1f}s  val {result.best_val_loss:.4f}", file=sys.stderr, flush=True)
        print_table(
            f"2. whole runs: chargen.training.train from call to return vs the bare loop, same steps, "
            f"evaluation every {args.eval_every} steps (start-up, checkpoints, evaluation, sample included)",
            ["config", "steps", "chars", "chargen s", "bare s", "chargen / bare", "outside steps", "chargen chars/s",
             "val loss", "GFLOP/s"],
            [[f"2x{r['hidden']} {r['precision']}", str(r["steps"]), f"{r['chars']:,}", f"{r['chargen_wall']:.1f}",
              f"{r['bare_wall']:.1f}", f"{r['ratio']:.3f}",
              f"{r['outside_steps']:.1f} s ({100 * r['outside_share']:.1f}%)", f"{r['chargen_chars_per_sec']:,.0f}",
              f"{r['val_loss']:.4f}", f"{r['gflops']:.1f}"] for r in runs])
        fp32_512 = [r for r in runs if r["hidden"] == 512 and r["precision"] == "fp32"]
        bf16_512 = [r for r in runs if r["hidden"] == 512 and r["precision"] == "bf16"]
        if fp32_512 and bf16_512:
            speedup = bf16_512[0]["chargen_chars_per_sec"] / fp32_512[0]["chargen_chars_per_sec"]
            delta = bf16_512[0]["val_loss"] - fp32_512[0]["val_loss"]
            print(f"bf16 vs fp32 at 2x512 after {fp32_512[0]['chars']:,} chars: {speedup:.2f}x the speed, "
                  f"val loss {delta:+.4f} nats (benchmarks/precision.py runs the long comparison)")
    write_json(args.json, {"device": args.device, "batch": batch, "seq_len": SEQ, "dropout": args.dropout,
                           "peak_gflops": {k: v / 1e9 for k, v in peak.items()}, "grid": grid, "runs": runs})


if __name__ == "__main__":
    main()
