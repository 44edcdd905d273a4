"""Wrappers that read a cell's output where its state's width is expected refuse a projected LSTM
(output P wide, state H wide) with a message that says so, instead of failing inside a step."""

import pytest

from rnnkit.cells import AttentionCell, DeepTransitionCell, LeakyCell, LSTMCell, SkipCell


@pytest.mark.parametrize(
    "wrap",
    [
        lambda c: LeakyCell(c, alpha=0.5),
        lambda c: SkipCell(c, delay=2),
        lambda c: AttentionCell(c, 6, 4),
        lambda c: DeepTransitionCell(c, transition_layers=(8,)),
    ],
    ids=["leaky", "skip", "attention", "deep-transition"],
)
def test_wrappers_refuse_a_projected_lstm(wrap):
    with pytest.raises(ValueError, match=r"outputs 3 values per step but its state is 8 wide \(a projected LSTM\)"):
        wrap(LSTMCell(8, 8, proj_size=3))
    wrap(LSTMCell(8, 8))  # the same wrapper around an unprojected LSTM is fine
