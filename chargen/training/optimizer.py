"""AdamW, as torch computes it, without importing torch's compiler.

torch's optimizers import `torch._dynamo` the first time they step (to mark a graph break for
torch.compile) and the first time a few methods run (`add_param_group`, `zero_grad`,
`state_dict`, `load_state_dict`, wrapped to be skipped by the compiler). That import takes about
1 s, a fifth of a `chargen train` on a ten-name list (6.25 s against 5.07 without it on a 2-core
AMD EPYC Zen 4; docs/benchmarks.md), for a compiler chargen never uses. This subclass steps through torch's documented functional form,
`torch.optim.adamw.adamw`, and calls the four methods' undecorated functions: the same arithmetic
and the same state, bit for bit (tests/test_training.py), so checkpoints move between the two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.adamw import adamw


def _undecorated(name: str):
    """torch.optim.Optimizer's method `name` as written, without the compiler's wrapper (where there is one)."""
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW (amsgrad, maximize, capturable, fused and differentiable off), stepped
    without torch._dynamo. A closure is not taken: chargen computes its loss before the step."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _undecorated("add_param_group")(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated("zero_grad")(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _undecorated("state_dict")(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _undecorated("load_state_dict")(self, state_dict)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise TypeError("chargen's AdamW takes no closure")
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["fused"] \
                    or group["differentiable"]:
                raise ValueError("chargen's AdamW implements plain AdamW only")
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # as torch starts it: the step count a float32 scalar on the CPU
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=group["foreach"],
                  grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None),
                  amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                  eps=group["eps"], maximize=False)
