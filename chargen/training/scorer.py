"""The torch side of chargen.evaluation's Scorer: a CharRNN scores whole windows on its device,
under the training precision's autocast (the numpy twin, NumpyScorer, lives beside the losses)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import PAD
from ..model import evaluating, full_fp32, state_from_tensors
from .device import autocast


class TorchScorer:
    """A CharRNN over whole windows, in eval mode, under the training precision's autocast."""

    def __init__(self, model, device, precision: str = "fp32"):
        self.model, self.device, self.precision = model, device, precision

    def initial(self, start_state: Optional[list[np.ndarray]], rows: int):
        if start_state is None:
            return None  # nn.LSTM/GRU/RNN start from zeros
        return state_from_tensors([torch.from_numpy(a).to(self.device)[:, None].expand(-1, rows, -1).contiguous()
                                   for a in start_state])  # each (layers, rows, H)

    def score(self, inputs: np.ndarray, targets: np.ndarray, state):
        with evaluating(self.model), torch.no_grad(), full_fp32():
            x = torch.from_numpy(inputs).to(self.device)
            y = torch.from_numpy(np.ascontiguousarray(targets)).to(self.device)
            with autocast(self.device, self.precision):
                logits, state = self.model(x, state)  # (B, T, V)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                  ignore_index=PAD, reduction="sum")
        return nll.double(), state  # summed on the device; one sync when the caller takes float()
