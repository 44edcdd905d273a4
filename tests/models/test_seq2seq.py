"""The encoder–decoder, with and without attention, against hand-stepped loops written from the equations."""

import pytest
import torch

from rnnkit import Bidirectional, Stack
from rnnkit.cells import AttentionCell, ElmanCell, GRUCell, LSTMCell
from rnnkit.cells.state import map_state
from rnnkit.models import Encoder, Seq2Seq
from tests.helpers import TOL, assert_same_computation, randomize_

tol = TOL[torch.float64]
SV, TV, E, H = 9, 6, 4, 5  # different vocabularies on each side


def make(context="init", attention=None, bidirectional=False, seed=0, **kw):
    torch.manual_seed(seed)
    enc_layer = Bidirectional(GRUCell(3, H)) if bidirectional else GRUCell(3, H)
    encoder = Encoder(enc_layer, vocab_size=SV)
    D = encoder.output_size
    extra = (D if context in ("input", "both") else 0) + (D if attention else 0)
    model = Seq2Seq(
        encoder, LSTMCell(E + extra, H), TV, E, bos=0, eos=1, context=context, attention_size=attention, **kw
    )
    return randomize_(model.double(), scale=0.4, seed=seed)


def data(S=5, T=4, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, SV, (S, B), generator=g), torch.randint(0, TV, (T, B), generator=g)


def reference(model, src, tgt, src_lengths, context):
    """Each sequence alone: the encoder cell stepped over its own length, then the decoder cell
    stepped over the target, attention written out as Bahdanau's equations."""
    enc_cell = model.encoder.layer.cell
    src_emb = model.encoder.inputs.embedding.weight
    dec = model.decoder
    att = dec.layer.cell if dec.attention else None
    cell = att.cell if att else dec.layer.cell
    emb, out = dec.feedback.embedding.weight, dec.readout.out.proj
    rows = []
    for b, n in enumerate(src_lengths):
        state, mem = None, []
        for s in range(n):
            h, state = enc_cell(src_emb[src[s, b : b + 1]], state)
            mem.append(h)
        C = h  # (1, D): the final state
        memory = torch.cat(mem)  # (n, D)
        s_state = None
        if context in ("init", "both"):
            hc = torch.tanh(dec.bridge.proj(C))
            s_state = (hc[:, :H], hc[:, H:])
        prev, outs = torch.tensor([model.bos]), []
        for t in range(tgt.shape[0]):
            parts = [emb[prev]] + ([C] if context in ("input", "both") else [])
            if att:
                s_prev = s_state[0] if s_state is not None else torch.zeros(1, H, dtype=torch.float64)
                e = (
                    torch.tanh(s_prev @ att.query.weight.T + memory @ att.key.weight.T + att.key.bias)
                    @ att.score.weight.T
                )  # (n, 1)
                alpha = torch.softmax(e.squeeze(-1), 0)
                c = (alpha.unsqueeze(-1) * memory).sum(0, keepdim=True)  # (1, D)
                parts.append(c)
            s, s_state = cell(torch.cat(parts, -1), s_state)
            readin = torch.cat([s, c], -1) if att else s
            outs.append(out.bias + readin @ out.weight.T)
            prev = tgt[t, b : b + 1]
        rows.append(torch.cat(outs))  # (T, V)
    return torch.stack(rows, 1)  # (T, B, V)


@pytest.mark.parametrize("context", ["init", "input", "both"])
@pytest.mark.parametrize("attention", [None, 3], ids=["plain", "attention"])
def test_seq2seq_equals_hand_stepped_reference(context, attention):
    model = make(context, attention)
    src, tgt = data()
    src_lengths = [5, 2, 4]
    params = list(model.parameters())  # the embedding tables included: gradients reach every input path
    assert_same_computation(
        lambda: model(src, tgt, src_lengths).logits,
        lambda: reference(model, src, tgt, src_lengths, context),
        [],
        params,
        params,
    )


@pytest.mark.parametrize("attention", [None, 3], ids=["plain", "attention"])
def test_stepping_the_decoder_gives_forward(attention):
    model = make("both", attention, bidirectional=True)
    src, tgt = data(S=6, T=5)
    src_lengths = [6, 3, 1]
    out = model(src, tgt, src_lengths)
    state = model.start(context=model.encode(src, src_lengths))
    prev = torch.full((3,), model.bos)
    for t in range(5):
        step, state = model.step(prev, state)
        torch.testing.assert_close(step.logits, out.logits[t], **tol)
        assert step.halt is None
        prev = tgt[t]


def test_padded_batch_equals_each_pair_alone():
    model = make("input", 3)
    src, tgt = data(S=6, T=5)
    src_lengths, tgt_lengths = [6, 2, 4], [3, 5, 1]
    src[2:, 1] = -1
    tgt[1:, 2] = -100
    out = model(src, tgt, src_lengths, tgt_lengths)
    for b in range(3):
        s, t = src_lengths[b], tgt_lengths[b]
        alone = model(src[:s, b : b + 1], tgt[:t, b : b + 1])
        torch.testing.assert_close(out.logits[:t, b : b + 1], alone.logits, **tol)


def test_attention_weights_are_a_distribution_over_the_valid_source():
    model = make("init", 3)
    src, _ = data(S=6)
    state = model.start(context=model.encode(src, [6, 2, 4]))
    _, state = model.step(torch.zeros(3, dtype=torch.long), state)
    alpha = model.attention_weights(state).detach()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, dtype=torch.float64), **tol)
    assert float(alpha[1, 2:].abs().max()) == 0.0 and float(alpha[2, 4:].abs().max()) == 0.0


def test_beam_reorder_and_length_head():
    model = make("both", 3, max_length=7)
    src, tgt = data()
    enc = model.encode(src, [5, 3, 2])
    idx = torch.tensor([2, 2, 0])
    enc_moved = map_state(lambda t: t.index_select(0, idx), enc)
    state, moved = model.start(context=enc), model.start(context=enc_moved)
    torch.testing.assert_close(model.predict_length(moved), model.predict_length(state)[idx])
    a, _ = model.step(torch.tensor([0, 3, 4])[idx], moved)
    b, _ = model.step(torch.tensor([0, 3, 4]), state)
    torch.testing.assert_close(a.logits, b.logits[idx], **tol)
    assert model(src, tgt, [5, 3, 2]).length.shape == (3, 7)


def test_seq2seq_bad_arguments():
    model = make("init", 3)
    src, tgt = data()
    with pytest.raises(ValueError, match=r"Seq2Seq decoder: y holds token id 8, outside the vocabulary \[0, 6\)"):
        model(src, torch.full((4, 3), 8))  # target ids from the source vocabulary
    with pytest.raises(ValueError, match=r"Encoder: x holds token id 9, outside the vocabulary \[0, 9\)"):
        model(torch.full((5, 3), 9), tgt)
    with pytest.raises(ValueError, match="tgt has batch 2 but src has batch 3"):
        model(src, tgt[:, :2])
    with pytest.raises(ValueError, match=r"Encoder: every length must be in \[1, T=5\], got 7"):
        model(src, tgt, src_lengths=[7, 1, 1])
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=4\], got 5"):
        model(src, tgt, tgt_lengths=[5, 1, 1])
    enc = Encoder(GRUCell(3, H), vocab_size=SV)
    with pytest.raises(ValueError, match=r"the layer must read I=0 \+ E=4 \+ C=5 = 9 inputs, got input_size 4"):
        Seq2Seq(enc, GRUCell(E, H), TV, E, bos=0, context="input")
    with pytest.raises(
        ValueError, match=r"input_size must be embedding_size \+ memory_size = 4 \+ 5 = 9 .*got input_size 5"
    ):
        Seq2Seq(enc, GRUCell(5, H), TV, E, bos=0, attention_size=3)
    with pytest.raises(TypeError, match="attention wraps the decoder's cell"):
        Seq2Seq(enc, Stack.build(GRUCell, E + H, H, 2), TV, E, bos=0, attention_size=3)
    with pytest.raises(ValueError, match=r"bos must be a token id in \[0, 6\), got 7"):
        Seq2Seq(enc, GRUCell(E, H), TV, E, bos=7)
    with pytest.raises(TypeError, match="start needs context = model.encode"):
        model.start(3, context=torch.zeros(3, H))
    with pytest.raises(ValueError, match="the state must hold the encoder memory"):
        AttentionCell(ElmanCell(E + H, H), H, 3).init_state(2)
    state = model.start(context=model.encode(src))
    for bad in (6, -1):  # the step's embedding lookup fails on these; the message says which id
        with pytest.raises(ValueError, match=rf"y_prev holds token id {bad}, outside the vocabulary \[0, 6\)"):
            model.step(torch.tensor([0, bad, 1]), state)
    with pytest.raises(ValueError, match=r"y_prev holds token id 7"):
        model.step(torch.tensor([0, 7, 1], dtype=torch.int32), state)


def test_attention_width_error_states_the_size_expected():
    # the case of the report: a bidirectional encoder of 2 × 128 = 256 and embeddings of 16
    enc = Encoder(Bidirectional(GRUCell(3, 128)), vocab_size=SV)
    with pytest.raises(
        ValueError,
        match=r"the decoder cell reads \[e\(y\); c\(t\)\], so its input_size must be "
        r"embedding_size \+ memory_size = 16 \+ 256 = 272 .*got input_size 160",
    ):
        Seq2Seq(enc, GRUCell(160, 32), TV, 16, bos=0, attention_size=8)
    with pytest.raises(
        ValueError,
        match=r"embedding_size \+ the summary C \+ memory_size = 16 \+ 256 \+ 256 = 528 .*"
        r"got input_size 272",
    ):
        Seq2Seq(enc, GRUCell(272, 32), TV, 16, bos=0, attention_size=8, context="both")
    Seq2Seq(enc, GRUCell(272, 32), TV, 16, bos=0, attention_size=8)  # the size it names is the one that works
    with pytest.raises(
        ValueError,
        match=r"input_size must be I \+ memory_size = I \+ 256 with I ≥ 1 \(at least 257; "
        r"I is the width of x\); got input_size 160",
    ):
        AttentionCell(GRUCell(160, 32), 256, 8)


def test_a_target_framed_with_bos_is_refused_and_the_message_says_what_to_pass():
    model = make("init", 3)  # bos = 0
    src, tgt = data(B=4)
    framed = torch.cat([torch.zeros(1, 4, dtype=torch.long), tgt])  # BOS, the targets: what Seq2SeqSplit holds
    with pytest.raises(
        ValueError, match=r"tgt starts with bos \(id 0\) in every column.*tgt\[1:\] and tgt_lengths - 1"
    ):
        model(src, framed, tgt_lengths=[5, 5, 4, 3])
    tgt[0, 1] = 0  # one target that starts with the id of bos is not a framed batch
    assert model(src, tgt).logits.shape == (4, 4, TV)
