"""How fast this device trains a shape: a few real training steps, timed (chargen.training.sizing decides).

The steps are the training loop's own (`loss_and_gradients` and AdamW) on random windows of the
run's batch and window, in the precision the run would use for that shape, so the rate includes
what the machine's CPU flags, thread count or GPU make of it. Nothing of the run is touched: the
weights and inputs come from a generator of their own, inside a fork of torch's global RNG.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..config import ModelConfig, TrainConfig
from ..model import CharRNN, detach_state
from ..errors import ModelTooLarge
from .device import check_fits, out_of_memory_reported, resolve_precision
from .loop import loss_and_gradients, make_optimizer

WARMUP_STEPS = 1  # the first step builds oneDNN/cuDNN primitives: not timed
MIN_TIMED_STEPS = 2
MIN_TIMED_SECONDS = 0.25


def measure_rate(options: dict[str, Any], vocab_size: int, batch_size: int, seq_len: int, *, device: torch.device,
                 precision: str, seconds: float, seed: int = 0) -> tuple[float, float]:
    """Characters per second of training steps of the shape `options` (ModelConfig fields), and
    the wall time the measurement took. Times at least MIN_TIMED_STEPS steps and
    MIN_TIMED_SECONDS, and stops early when `seconds` run out (the rate then rests on fewer steps,
    or on the warm-up step alone, which overstates the cost)."""
    t0 = time.perf_counter()
    config = ModelConfig(vocab_size=vocab_size, **options)
    check_fits(config, device)  # (a shape given too large for the machine: one error, before allocating it)
    devices = range(torch.cuda.device_count()) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), out_of_memory_reported(device, ModelTooLarge):
        torch.manual_seed(seed)
        model = CharRNN(config).to(device)
        precision = resolve_precision(precision, device, lambda message: None, config)
        optimizer = make_optimizer(model, TrainConfig())
        generator = torch.Generator().manual_seed(seed)
        x = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
        y = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        state = None

        def step():
            nonlocal state
            loss, _, new_state = loss_and_gradients(model, model, optimizer, x, y, state, device, precision, 1.0, scaler)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state = detach_state(new_state)
            return loss

        warm = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            step().item()  # .item() waits for a GPU
        start, steps = time.perf_counter(), 0
        if start - t0 + (start - warm) / WARMUP_STEPS > seconds:
            # No time for a timed step: the warm-up is all there is (an estimate on the slow side).
            return batch_size * seq_len * WARMUP_STEPS / (start - warm), start - t0
        while True:
            step().item()
            steps += 1
            now = time.perf_counter()
            elapsed = now - start
            if steps >= MIN_TIMED_STEPS and elapsed >= MIN_TIMED_SECONDS:
                break
            if now - t0 + elapsed / steps > seconds:  # one more step would overrun the allowance
                break
    return batch_size * seq_len * steps / elapsed, time.perf_counter() - t0
