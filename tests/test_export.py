"""Exported programs (torch.export) against the models they came from: equal outputs and states,
at batch sizes and lengths other than the example's, after a save and load."""

import pytest
import torch

from rnnkit import Encoder, ManyToOne, Recurrent, Seq2Seq, Stack, Tagger
from rnnkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell
from rnnkit.export import check_exported, describe_inputs, example_inputs, export, free_batch_size, load, plain, save
from rnnkit.tasks.charlm import CharLM, CharLMConfig
from tests.helpers import TOL, randomize_

F64 = TOL[torch.float64]


def call_targets(program):
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


def char_lm(seed=0):
    torch.manual_seed(seed)
    cfg = CharLMConfig(cell="lstm", embedding_size=6, hidden_size=8, num_layers=2, dropout=0.2)
    return randomize_(CharLM(11, cfg), scale=0.5, seed=seed).double()


def random_states(batch, layers, width, seed):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        tuple(torch.randn(batch, width, generator=gen, dtype=torch.float64) for _ in range(2)) for _ in range(layers)
    )


def test_char_lm_step_program_generates_what_the_model_does(tmp_path):
    """The stacked-LSTM char-LM as one step of generation (T = 1, state in and out): one aten.lstm
    node for the whole stack, no rnnkit type in its signature; carried through 6 steps at a batch
    size other than the example's, after save and load, it gives the model's logits and states."""
    model = char_lm()
    args, kwargs = example_inputs(model, steps=1, batch_size=2)
    program = export(model, args, kwargs)
    assert sum("aten.lstm" in t for t in call_targets(program)) == 1
    assert model.training, "export restores the model's mode"
    step = load(save(program, tmp_path / "lm.pt2"))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (6, 5), generator=gen)
    ours, theirs = random_states(5, 2, 8, seed=2), random_states(5, 2, 8, seed=2)
    for t in range(6):
        got_logits, ours = step(tokens[t : t + 1], state=ours)
        want_logits, theirs = model(tokens[t : t + 1], theirs)
        torch.testing.assert_close(got_logits, want_logits, **F64)
        assert type(ours) is tuple and type(ours[0]) is tuple  # plain tuples: loadable without rnnkit
        for a, b in zip(ours, plain(theirs)):
            torch.testing.assert_close(a, b, **F64)


def test_char_lm_chunk_program_with_lengths_equals_the_model():
    """A T-step program of the char-LM takes lengths: the stack then runs the reference loop in
    the program (torch's kernel would pack by their values), equal to the model, which runs them
    on the fused engine."""
    model = char_lm(seed=3)
    args, kwargs = example_inputs(model, steps=5, batch_size=2)
    assert set(kwargs) == {"lengths", "state"}
    program = export(model, args, kwargs).module()
    assert describe_inputs(model, args, kwargs, 2) == (
        "tokens (5, B) int64; state (((B, 8) float64, (B, 8) float64), "
        "((B, 8) float64, (B, 8) float64)); lengths (B,) int64"
    )
    model.eval()
    tokens = torch.randint(0, 11, (5, 4), generator=torch.Generator().manual_seed(4))
    lengths = torch.tensor([2, 5, 1, 4])
    state = random_states(4, 2, 8, seed=5)
    got = program(tokens, lengths=lengths, state=state)
    want = model(tokens, state, lengths)
    assert model.rnn.layers[0].last_engine == "fused"
    for a, b in zip(got[1], plain(want[1])):
        torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(got[0], want[0], **F64)


@pytest.mark.parametrize(
    "make_cell, bidirectional",
    [
        (lambda i, h: LSTMCell(i, h, peephole=True), True),
        (lambda i, h: LayerNormLSTMCell(i, h), False),
        (lambda i, h: LSTMCell(i, h, proj_size=3, peephole=True), False),
    ],
    ids=["peephole-bidirectional", "layernorm", "projected-peephole"],
)
def test_variant_cell_classifier_program_equals_the_model(make_cell, bidirectional, tmp_path):
    """A many-to-one classifier over a variant cell: the model runs fused, the program the
    reference loop (export cannot see into the fused engine's C++); equal outputs in float64 for
    other batch sizes and unsorted lengths, after save and load."""
    torch.manual_seed(0)
    layer = Stack.build(make_cell, 3, 6, num_layers=2, bidirectional=bidirectional, dropout=0.3)
    model = randomize_(ManyToOne(layer, 4), scale=0.5, seed=1).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    program = load(save(export(model, (x, torch.tensor([5, 3]))), tmp_path / "clf.pt2"))
    assert not any("rnnkit" in t for t in call_targets(torch.export.load(tmp_path / "clf.pt2")))
    model.eval()
    for batch, lengths in [(3, [5, 1, 4]), (7, [2, 5, 5, 3, 1, 4, 5])]:
        x = torch.randn(5, batch, 3, generator=gen, dtype=torch.float64)
        lengths = torch.tensor(lengths)
        torch.testing.assert_close(program(x, lengths), model(x, lengths), **F64)
    for layer in model.encoder.layer.layers:
        assert (layer.forward_layer if bidirectional else layer).last_engine == "fused"


def test_token_models_export_a_tagger_and_an_attention_seq2seq():
    """Models that check their token ids check only dtype and shape while tracing (the ids are the
    program's input): a bidirectional tagger and a seq2seq with attention, equal to the model
    at another batch size."""
    torch.manual_seed(0)
    tagger = randomize_(Tagger(Stack.build(GRUCell, 4, 5, 2, bidirectional=True), 3, vocab_size=9), seed=1).double()
    seq2seq = randomize_(
        Seq2Seq(
            Encoder(Recurrent(LSTMCell(4, 6)), vocab_size=9),
            LSTMCell(4 + 6, 6),
            vocab_size=9,
            embedding_size=4,
            bos=0,
            eos=1,
            attention_size=5,
        ),
        seed=2,
    ).double()
    gen = torch.Generator().manual_seed(3)
    tokens = lambda T, B: torch.randint(0, 9, (T, B), generator=gen)  # noqa: E731
    tag = export(tagger, (tokens(6, 2), torch.tensor([6, 4]))).module()
    translate = export(seq2seq, (tokens(5, 2), tokens(4, 2))).module()
    x, lengths = tokens(6, 5), torch.tensor([1, 6, 3, 6, 2])
    torch.testing.assert_close(tag(x, lengths), tagger.eval()(x, lengths), **F64)
    src, tgt = tokens(5, 3), tokens(4, 3)
    torch.testing.assert_close(translate(src, tgt)[0], seq2seq.eval()(src, tgt).logits, **F64)


def test_layer_program_returns_plain_states_and_a_float32_program_matches_to_1e_5():
    """A single layer exports too, also one asked to run fused (the program runs its reference
    loop); states come out as plain tuples in LSTMState's field order."""
    torch.manual_seed(0)
    layer = Recurrent(LSTMCell(3, 5, cell_clip=1.0), engine="fused")
    x = torch.randn(4, 2, 3)
    program = export(layer, (x,)).module()
    x = torch.randn(4, 6, 3)
    y, (h, c) = program(x)
    want_y, want = layer.eval()(x)
    torch.testing.assert_close(y, want_y, **TOL[torch.float32])
    torch.testing.assert_close(h, want.h, **TOL[torch.float32])
    torch.testing.assert_close(c, want.c, **TOL[torch.float32])


def test_free_batch_size_keeps_the_batch_apart_from_every_other_size():
    """An example batch equal to another size (here H = 2) would let torch.export take the two for
    one and fix the batch; free_batch_size picks one unlike T and every weight's sizes."""
    layer = Recurrent(LSTMCell(3, 2))  # weights (8, 3), (8, 2), (8,)
    assert free_batch_size(layer, steps=4) == 5 and free_batch_size(layer, steps=4, avoid=5) == 6
    x = torch.randn(4, free_batch_size(layer, steps=4), 3)
    program = export(layer, (x,)).module()
    for batch in (1, 2, 8):
        x = torch.randn(4, batch, 3)
        torch.testing.assert_close(program(x)[0], layer(x)[0], **TOL[torch.float32])


def test_check_exported_names_the_output_that_differs():
    torch.manual_seed(0)
    a, b = Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(3, 4))
    x = torch.randn(3, 2, 3)
    program = export(a, (x,))
    with pytest.raises(AssertionError, match="export: output tensor 0 of the program differs from the model's"):
        check_exported(program, b.eval(), (x,))


def test_example_inputs_refuses_a_model_of_two_inputs():
    class TwoInputs(torch.nn.Module):
        def forward(self, source, target):
            return source

    with pytest.raises(ValueError, match=r"TwoInputs.forward needs 2 inputs \(source, target\)"):
        example_inputs(TwoInputs(), steps=3)
