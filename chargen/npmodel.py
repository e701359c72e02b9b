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

    fork_safe = True  # plain numpy arrays: a forked worker process can step it (chargen.sampling.parallel)

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
        # For an LSTM both biases simply add up: fold them into one. And since
        # sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 2 sigmoid(2x) - 1, pre-scale the three
        # sigmoid gates by -1 and the candidate by -2: then one exp over all four gates does the
        # transcendental work of the step (numpy's float32 exp costs half its tanh on AVX2).
        if config.cell == "lstm":
            scale = np.full(4 * h, -1.0, np.float32)
            scale[3 * h :] = -2.0
            self.b_ih = [(b_i + b_h) * scale for b_i, b_h in zip(self.b_ih, self.b_hh)]
            self.b_hh = [None] * config.layers
            self.w_ih_t = [w * scale for w in self.w_ih_t]
            self.w_hh_t = [w * scale for w in self.w_hh_t]
        # Layers above the first take [x, h] @ [W_ih; W_hh]: one matrix multiply instead of two.
        self.w_cat = [None] + [np.ascontiguousarray(np.vstack([self.w_ih_t[k], self.w_hh_t[k]]))
                               for k in range(1, config.layers)]
        # The first layer's input projection of every character, looked up instead of multiplied.
        self.input_table = f32(emb @ self.w_ih_t[0] + self.b_ih[0])  # (V, G*H), biases included
        self.head_w_t = f32(weights["head.weight"].T)  # (H, V)
        self.head_b = f32(weights["head.bias"])

    def init_state(self, batch_size: int) -> NpState:
        h, n = self.config.hidden, self.config.state_tensors
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

    @staticmethod
    def to_rows(state: NpState) -> np.ndarray:
        """A state as one float32 row per sample: (B, layers * tensors * H), for a store of states."""
        return np.concatenate([t for layer in state for t in layer], axis=1)

    def from_rows(self, rows: np.ndarray) -> NpState:
        """The inverse of to_rows."""
        h, n = self.config.hidden, self.config.state_tensors
        return [tuple(np.ascontiguousarray(rows[:, (layer * n + k) * h : (layer * n + k + 1) * h]) for k in range(n))
                for layer in range(self.config.layers)]

    @staticmethod
    def concat(states: list[NpState]) -> NpState:
        """Batches of rows -> one batch, row order kept."""
        return [tuple(np.concatenate(parts, axis=0) for parts in zip(*layers)) for layers in zip(*states)]

    def step(self, ids: np.ndarray, state: NpState) -> tuple[np.ndarray, NpState]:
        """ids (B,) -> logits (B, V) for the next character, and the new state."""
        new_state: NpState = []
        x = None
        for layer, layer_state in enumerate(state):
            if self.config.cell == "lstm":
                layer_state = self._lstm(layer, ids, x, *layer_state)
            else:
                gi = self.input_table[ids] if layer == 0 else x @ self.w_ih_t[layer] + self.b_ih[layer]  # (B, G*H)
                layer_state = self._gru(layer, gi, *layer_state) if self.config.cell == "gru" else \
                    (np.tanh(gi + layer_state[0] @ self.w_hh_t[layer] + self.b_hh[layer]),)
            new_state.append(layer_state)
            x = layer_state[0]
        logits = x @ self.head_w_t + self.head_b  # (B, V)
        return logits, new_state

    def head(self, state: NpState) -> np.ndarray:
        """The next character's logits (B, V) from a state: what `step` returned with it."""
        return state[-1][0] @ self.head_w_t + self.head_b

    def _lstm(self, layer: int, ids: np.ndarray, x, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hsz = self.config.hidden
        if layer == 0:
            g = h @ self.w_hh_t[0]  # (B, 4H): i/2, f/2, o/2 and g, pre-activation
            g += self.input_table[ids]
        else:
            g = np.concatenate([x, h], axis=1) @ self.w_cat[layer]
            g += self.b_ih[layer]
        with np.errstate(over="ignore"):  # exp(x) = inf for x > 88: the gate is then exactly 0
            np.exp(g, out=g)
            g += 1.0
            np.reciprocal(g, out=g)  # i, f, o are now sigmoids; g[:, 3H:] is sigmoid(2 x)
            cand = g[:, 3 * hsz :]
            cand *= 2.0
            cand -= 1.0  # the candidate's tanh
            c = g[:, hsz : 2 * hsz] * c
            c += g[:, :hsz] * cand
            t = c * -2.0
            np.exp(t, out=t)
            t += 1.0
            np.divide(2.0, t, out=t)
            t -= 1.0  # tanh(c)
        h = g[:, 2 * hsz : 3 * hsz] * t
        return h, c

    def _gru(self, layer: int, gi: np.ndarray, h: np.ndarray) -> tuple[np.ndarray]:
        hsz = self.config.hidden
        gh = h @ self.w_hh_t[layer] + self.b_hh[layer]  # (B, 3H)
        r = _sigmoid(gi[:, :hsz] + gh[:, :hsz])
        z = _sigmoid(gi[:, hsz : 2 * hsz] + gh[:, hsz : 2 * hsz])
        n = np.tanh(gi[:, 2 * hsz :] + r * gh[:, 2 * hsz :])
        return ((1.0 - z) * n + z * h,)
