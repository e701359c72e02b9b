"""The network: character embedding, a stacked recurrent core (LSTM, GRU or tanh RNN), a linear head.

No I/O here. The recurrent state is explicit: `forward` takes the state in and hands the new one
back, so the training loop can carry it from one window to the next (truncated BPTT) and the
sampler can carry it from one character to the next without re-running the prefix. Weights go
in and out as numpy arrays (`weights_of`, `load_weights`), the form checkpoints hold.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
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
        # Line-mode training: every line starts from this learned state, (state tensors, layers, H);
        # a labelled model has one per label, (labels, state tensors, layers, H).
        self.start = nn.Parameter(torch.zeros(config.weight_shapes()["start"])) if config.learned_start else None
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
        zeros = [torch.zeros(c.layers, batch_size, c.hidden, device=device) for _ in range(c.state_tensors)]
        return state_from_tensors(zeros)

    def forward(self, idx: torch.Tensor, state: State | None = None,
                labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) of token ids -> logits (B, T, V) and the state after the last step; with no
        state, the learned start state (line-mode models; a labelled model's rows start from their
        `labels`' (B,)) or zeros."""
        c = self.config
        if state is None and self.start is not None:
            state = self.start_states(idx.shape[0], labels)
        x = self.embedding(idx) if not (self.training and c.embed_dropout) else \
            F.embedding(idx, self.embedding.weight * _mask(self.embedding.weight, (c.vocab_size, 1), c.embed_dropout))
        if self.training and c.input_dropout:  # (B, T, E): one mask per row, the same at every step
            x = x * _mask(x, (x.shape[0], 1, x.shape[2]), c.input_dropout)
        if self.training and c.weight_drop:  # the recurrent weights with a fresh DropConnect mask
            dropped = {name: F.dropout(w, c.weight_drop) for name, w in self.rnn.named_parameters()
                       if name.startswith("weight_hh")}
            out, state = torch.func.functional_call(self.rnn, dropped, (x, state))  # (B, T, H)
        else:
            out, state = self.rnn(x, state)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, state

    def start_states(self, rows: int, labels: Optional[torch.Tensor] = None) -> State:
        """The learned start state of `rows` rows, (layers, B, H) each, gradients flowing to `start`."""
        if self.config.n_labels:
            if labels is None:
                raise ValueError("a labelled model needs each row's label")
            start = self.start[labels]  # (B, S, layers, H)
            return state_from_tensors([start[:, k].transpose(0, 1).contiguous() for k in range(start.shape[1])])
        return state_from_tensors([s.unsqueeze(1).expand(-1, rows, -1).contiguous() for s in self.start])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _mask(like: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A dropout mask of `shape` (broadcast over the rest): 0 with probability p, else 1 / (1 - p)."""
    return like.new_empty(shape).bernoulli_(1 - p) / (1 - p)


def detach_state(state: State) -> State:
    """Cut the graph between windows: gradients stop at the window edge, the values carry on."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def state_tensors(state: State) -> list[torch.Tensor]:
    """The state as a list of (layers, B, hidden) tensors: [h] or [h, c]."""
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: list[torch.Tensor]) -> State:
    """The inverse of state_tensors: what nn.LSTM (two tensors) or nn.GRU/nn.RNN (one) take."""
    return tuple(tensors) if len(tensors) > 1 else tensors[0]  # type: ignore[return-value]


# --- weights in and out -----------------------------------------------------------------------


def weights_of(model: CharRNN) -> dict[str, np.ndarray]:
    """The weights as float32 numpy arrays, named as in state_dict(): what a checkpoint holds."""
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def load_weights(model: CharRNN, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


def from_weights(config: ModelConfig, weights: dict[str, np.ndarray]) -> CharRNN:
    model = CharRNN(config)
    load_weights(model, weights)
    return model


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (no dropout, no weight drop) for the block, then in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def full_fp32() -> Iterator[None]:
    """cuDNN's recurrent kernels and cuBLAS's products in true float32 for the block. PyTorch lets
    cuDNN use TF32 by default (10-bit mantissas: log-probabilities off by up to 1e-2 after a few
    steps), and a caller may have allowed it for products, so a sampler or scorer on a GPU would
    part from the numpy twin it is held to. Training keeps the settings it finds; elsewhere than
    on CUDA this changes nothing."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- the state a line starts from -------------------------------------------------------------


@torch.no_grad()
def line_start_state(model: CharRNN, streams: torch.Tensor, newline_id: Optional[int], context: int = 128,
                     count: int = 128) -> list[np.ndarray]:
    """The model's typical state at the end of a line, just before it reads "\\n".

    Sampling and evaluation start from here instead of from zeros: during training the state
    is never zero at a line start (it is carried over), so a zero state is out of distribution
    and spoils the first characters. It is the mean of the states after `count` real contexts of
    `context` characters, each ending right before a newline (anywhere, for text without one).
    Returned as arrays of shape (layers, hidden): [h] or [h, c] for an LSTM.
    """
    flat = streams.reshape(-1)
    n = flat.numel()
    context = min(context, n - 1)
    if newline_id is not None:
        ends = torch.nonzero(flat[context:] == newline_id).flatten() + context
    else:
        ends = torch.empty(0, dtype=torch.long, device=flat.device)
    if ends.numel() == 0:
        ends = torch.arange(context, n, device=flat.device)
    pick = ends[torch.linspace(0, ends.numel() - 1, min(count, ends.numel()), device=flat.device).long()]
    windows = torch.stack([flat[e - context : e] for e in pick.tolist()]).long()  # (count, context)
    with evaluating(model):
        _, state = model(windows)
    return [t.float().mean(dim=1).cpu().numpy() for t in state_tensors(state)]  # each (layers, H)


# --- the sampler's adapter ----------------------------------------------------------------------


class TorchStepper:
    """Adapter that lets the sampler drive a torch CharRNN (on any device)."""

    def __init__(self, model: CharRNN, device: Optional[torch.device] = None):
        self.torch = torch
        self.model = model.eval()
        self.device = device or next(model.parameters()).device
        self.vocab_size = model.config.vocab_size

    def init_state(self, batch_size: int):
        return self.model.init_state(batch_size, self.device)

    def state_from_arrays(self, arrays: list[np.ndarray]):
        return state_from_tensors([self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None]
                                   .to(self.device) for a in arrays])  # each (layers, 1, hidden)

    def select(self, state, rows: np.ndarray):
        idx = self.torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        if isinstance(state, tuple):
            return tuple(s.index_select(1, idx) for s in state)
        return state.index_select(1, idx)

    def repeat(self, state, batch_size: int):
        if isinstance(state, tuple):
            return tuple(s.repeat(1, batch_size, 1) for s in state)
        return state.repeat(1, batch_size, 1)

    def concat(self, states: list):
        if isinstance(states[0], tuple):
            return tuple(self.torch.cat(parts, dim=1) for parts in zip(*states))
        return self.torch.cat(states, dim=1)

    def to_rows(self, state) -> np.ndarray:
        """A state as one float32 row per sample: (B, tensors * layers * H), for a store of states."""
        parts = [t.permute(1, 0, 2).reshape(t.shape[1], -1) for t in state_tensors(state)]
        return self.torch.cat(parts, dim=1).float().cpu().numpy()

    def from_rows(self, rows: np.ndarray):
        """The inverse of to_rows."""
        c = self.model.config
        flat = self.torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(self.device)
        per = c.layers * c.hidden
        return state_from_tensors([flat[:, k * per : (k + 1) * per].reshape(-1, c.layers, c.hidden).permute(1, 0, 2)
                                   .contiguous() for k in range(c.state_tensors)])

    def step(self, ids: np.ndarray, state):
        with self.torch.no_grad(), full_fp32():
            x = self.torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)[:, None]  # (B, 1)
            logits, state = self.model(x, state)
        return logits[:, 0].float().cpu().numpy(), state

    def head(self, state) -> np.ndarray:
        """The next character's logits (B, V) from a state: what `step` returned with it."""
        with self.torch.no_grad(), full_fp32():
            return self.model.head(state_tensors(state)[0][-1]).float().cpu().numpy()  # the top layer's h
