"""CharRNN's forward step in numpy, for sampling and evaluation without importing torch.

`import torch` alone takes over a second; numpy imports in a tenth of that. This mirrors
torch's nn.LSTM / nn.GRU / nn.RNN equations exactly (gate order i,f,g,o and r,z,n), in float32,
and a test checks that both give the same log-probabilities.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig

NpState = list[tuple[np.ndarray, ...]]  # per layer: (h, c) for LSTM, (h,) otherwise; each (B, H)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: one transcendental per element and no overflow warnings for large |x|.
    return np.tanh(x * 0.5) * 0.5 + 0.5


class NumpyCharRNN:
    """Inference-only twin of model.CharRNN built from a checkpoint's weights."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray]):
        self.config = config
        self.vocab_size = config.vocab_size
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        emb = f32(weights["embedding.weight"])  # (V, E)
        # LSTM gates are stored i, f, g, o; reorder them to i, f, o, g so that the three sigmoid
        # gates form one contiguous block and take one vectorised call.
        h = config.hidden
        order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h] if config.cell == "lstm" else slice(None)
        self.w_ih_t, self.w_hh_t, self.b_ih, self.b_hh = [], [], [], []
        for layer in range(config.layers):
            self.w_ih_t.append(f32(weights[f"rnn.weight_ih_l{layer}"][order].T))  # (in, G*H)
            self.w_hh_t.append(f32(weights[f"rnn.weight_hh_l{layer}"][order].T))  # (H, G*H)
            self.b_ih.append(f32(weights[f"rnn.bias_ih_l{layer}"][order]))
            self.b_hh.append(f32(weights[f"rnn.bias_hh_l{layer}"][order]))
        # For an LSTM both biases simply add up; fold them into one.
        if config.cell == "lstm":
            self.b_ih = [b_i + b_h for b_i, b_h in zip(self.b_ih, self.b_hh)]
            self.b_hh = [None] * config.layers
        # The first layer's input projection of every character, looked up instead of multiplied.
        self.input_table = f32(emb @ self.w_ih_t[0] + self.b_ih[0])  # (V, G*H), biases included
        self.head_w_t = f32(weights["head.weight"].T)  # (H, V)
        self.head_b = f32(weights["head.bias"])

    def init_state(self, batch_size: int) -> NpState:
        h = self.config.hidden
        n = 2 if self.config.cell == "lstm" else 1
        return [tuple(np.zeros((batch_size, h), np.float32) for _ in range(n)) for _ in range(self.config.layers)]

    def state_from_arrays(self, arrays: list[np.ndarray]) -> NpState:
        """[h] or [h, c], each (layers, hidden) -> a batch-of-one state."""
        return [tuple(np.ascontiguousarray(a[layer][None], dtype=np.float32) for a in arrays)
                for layer in range(self.config.layers)]

    @staticmethod
    def select(state: NpState, rows: np.ndarray) -> NpState:
        return [tuple(t[rows] for t in layer) for layer in state]

    @staticmethod
    def repeat(state: NpState, batch_size: int) -> NpState:
        return [tuple(np.repeat(t, batch_size, axis=0) for t in layer) for layer in state]

    def step(self, ids: np.ndarray, state: NpState) -> tuple[np.ndarray, NpState]:
        """ids (B,) -> logits (B, V) for the next character, and the new state."""
        cell, hsz = self.config.cell, self.config.hidden
        new_state: NpState = []
        x = None
        for layer, layer_state in enumerate(state):
            gi = self.input_table[ids] if layer == 0 else x @ self.w_ih_t[layer] + self.b_ih[layer]  # (B, G*H)
            h = layer_state[0]
            if cell == "lstm":
                g = h @ self.w_hh_t[layer]  # (B, 4H), gates i, f, o, g
                g += gi
                sig = g[:, : 3 * hsz]
                sig *= 0.5  # sigmoid(x) = tanh(x / 2) / 2 + 1/2, in place
                np.tanh(sig, out=sig)
                sig *= 0.5
                sig += 0.5
                cand = np.tanh(g[:, 3 * hsz :])
                c = g[:, hsz : 2 * hsz] * layer_state[1]
                c += g[:, :hsz] * cand
                h = g[:, 2 * hsz : 3 * hsz] * np.tanh(c)
                new_state.append((h, c))
            elif cell == "gru":
                gh = h @ self.w_hh_t[layer] + self.b_hh[layer]  # (B, 3H)
                r = _sigmoid(gi[:, :hsz] + gh[:, :hsz])
                z = _sigmoid(gi[:, hsz : 2 * hsz] + gh[:, hsz : 2 * hsz])
                n = np.tanh(gi[:, 2 * hsz :] + r * gh[:, 2 * hsz :])
                h = (1.0 - z) * n + z * h
                new_state.append((h,))
            else:
                h = np.tanh(gi + h @ self.w_hh_t[layer] + self.b_hh[layer])
                new_state.append((h,))
            x = h
        logits = x @ self.head_w_t + self.head_b  # (B, V)
        return logits, new_state
