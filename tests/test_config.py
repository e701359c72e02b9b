"""Configuration: every out-of-range value is a UsageError naming its flag; nothing else escapes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.config import ModelConfig, SampleConfig, TrainConfig, format_duration, parse_duration
from chargen.cli import spelling
from chargen.errors import ConfigError, UsageError

ints = st.integers(-(2**40), 2**40)
floats = st.floats(allow_nan=True, allow_infinity=True)


@given(batch_size=ints, seq_len=ints, lr=floats, weight_decay=floats, grad_clip=floats, val_fraction=floats,
       max_steps=st.none() | ints, time=st.none() | floats)
@settings(max_examples=300, deadline=None)
def test_train_config_validation(batch_size, seq_len, lr, weight_decay, grad_clip, val_fraction, max_steps, time):
    cfg = TrainConfig(batch_size=batch_size, seq_len=seq_len, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                      val_fraction=val_fraction, max_steps=max_steps, time=time)
    try:
        cfg.validate()
    except UsageError as exc:
        assert exc.options and exc.render(spelling).startswith("--") and "\n" not in str(exc)
    else:
        assert batch_size > 0 and seq_len > 0 and lr > 0 and weight_decay >= 0 and grad_clip >= 0
        assert 0 <= val_fraction < 1 and (max_steps is None or max_steps > 0) and (time is None or time > 0)


@given(layers=ints, hidden=ints, embed=ints, dropout=floats, cell=st.sampled_from(["lstm", "gru", "rnn", "tcn", ""]))
@settings(max_examples=200, deadline=None)
def test_model_config_validation(layers, hidden, embed, dropout, cell):
    try:
        ModelConfig(vocab_size=10, layers=layers, hidden=hidden, embed=embed, dropout=dropout, cell=cell).validate()
    except UsageError:
        pass
    else:
        assert layers > 0 and hidden > 0 and embed > 0 and 0 <= dropout < 1 and cell in ("lstm", "gru", "rnn")


@given(num=ints, length=st.none() | ints, temperature=floats, top_k=st.none() | ints,
       top_p=st.none() | floats)
@settings(max_examples=300, deadline=None)
def test_sample_config_validation(num, length, temperature, top_k, top_p):
    try:
        SampleConfig(num=num, length=length, temperature=temperature, top_k=top_k, top_p=top_p).validate()
    except UsageError:
        pass
    else:
        assert num >= 1 and (length is None or length >= 1) and temperature >= 0
        assert top_k is None or top_k >= 1
        assert top_p is None or 0 < top_p <= 1


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="batchsize"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ConfigError, match="hiden"):
        ModelConfig.from_dict({"vocab_size": 3, "hiden": 3})


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("2h", 7200), ("1.5h", 5400), ("300", 300),
                                           ("1h30m", 5400), ("1h05m00s", 3900), ("2m 30s", 150), ("5min", 300), ("1 sec", 1),
                                           # words and plurals (5mins was an error)
                                           ("5mins", 300), ("5 minutes", 300), ("1 hour 30 minutes", 5400), ("2hrs", 7200),
                                           ("1 day", 86400), ("10 secs", 10), ("1 second", 1)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds  # what a summary prints can be given back


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0s", "5 parsecs", "m5", "1h30", "5m-1s", "0m0s", "1" * 40 + "x", "5ms", "mins"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="^time must be a positive duration"):
        parse_duration(text)
