import numpy as np
import pytest
import torch

from chargen.config import ModelConfig
from chargen.model import CharRNN, detach_state, weights_of
from chargen.npmodel import NumpyCharRNN
from chargen.model import TorchStepper
from chargen.sampling import log_softmax


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_numpy_backend_matches_torch(cell, layers):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=23, cell=cell, layers=layers, hidden=48, embed=12)
    model = CharRNN(config).eval()
    with torch.no_grad():  # random biases too, so every term of the equations is exercised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    npm = NumpyCharRNN(config, weights_of(model))
    ids = np.random.default_rng(0).integers(0, 23, size=(5, 17))
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids))
    expected = log_softmax(logits.numpy())
    state = npm.init_state(5)
    for t in range(ids.shape[1]):
        step_logits, state = npm.step(ids[:, t], state)
        np.testing.assert_allclose(log_softmax(step_logits), expected[:, t], atol=2e-4)
    # and the torch stepper, one step at a time with carried state, agrees as well
    stepper = TorchStepper(model)
    tstate = stepper.init_state(5)
    for t in range(ids.shape[1]):
        step_logits, tstate = stepper.step(ids[:, t], tstate)
        np.testing.assert_allclose(log_softmax(step_logits), expected[:, t], atol=2e-4)


def test_lstm_forget_gate_bias_starts_at_one():
    model = CharRNN(ModelConfig(vocab_size=5, hidden=8, embed=4, layers=2))
    b = model.rnn.bias_ih_l1.detach() + model.rnn.bias_hh_l1.detach()
    assert torch.allclose(b[8:16], torch.ones(8))  # gates are i, f, g, o: f is the second block


def test_detach_state_cuts_the_graph_but_keeps_values():
    model = CharRNN(ModelConfig(vocab_size=5, hidden=8, embed=4))
    _, state = model(torch.zeros(2, 3, dtype=torch.long))
    assert state[0].requires_grad
    d = detach_state(state)
    assert not d[0].requires_grad and torch.equal(d[0], state[0])
