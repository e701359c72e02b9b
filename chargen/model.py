"""The network: character embedding, a stacked recurrent core (LSTM, GRU or tanh RNN), a linear head.

No I/O here. The recurrent state is explicit: `forward` takes the state in and hands the new one
back, so the training loop can carry it from one window to the next (truncated BPTT) and the
sampler can carry it from one character to the next without re-running the prefix.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .config import ModelConfig

# An LSTM carries (h, c); a GRU or RNN carries h alone. Each is (layers, B, hidden).
State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed)
        self.rnn = _CELLS[config.cell](
            input_size=config.embed,
            hidden_size=config.hidden,
            num_layers=config.layers,
            # PyTorch applies this dropout between stacked layers only; we add one on the output.
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        nn.init.normal_(self.head.weight, std=self.config.hidden**-0.5)
        nn.init.zeros_(self.head.bias)
        if self.config.cell == "lstm":
            # Forget-gate bias of 1 (Jozefowicz et al. 2015): the cell remembers by default, which
            # speeds up early learning. PyTorch has two bias vectors per layer; gates are i, f, g, o.
            h = self.config.hidden
            for name, param in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        param[h : 2 * h].fill_(1.0)
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        param[h : 2 * h].fill_(0.0)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        c = self.config
        device = device if device is not None else self.head.weight.device
        zeros = torch.zeros(c.layers, batch_size, c.hidden, device=device)
        if c.cell == "lstm":
            return (zeros, zeros.clone())
        return zeros

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) of token ids -> logits (B, T, V) and the state after the last step."""
        x = self.embedding(idx)  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph between windows: gradients stop at the window edge, the values carry on."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def state_tensors(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(cell: str, tensors: list[torch.Tensor]) -> State:
    return (tensors[0], tensors[1]) if cell == "lstm" else tensors[0]


def matmul_weights(config: ModelConfig) -> int:
    """Weights touched by matrix multiplies per character (the embedding is a lookup).

    Training costs about 6 FLOPs per such weight per character, sampling about 2.
    """
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    n = 0
    for layer in range(config.layers):
        inp = config.embed if layer == 0 else config.hidden
        n += gates * config.hidden * (inp + config.hidden)
    return n + config.hidden * config.vocab_size
