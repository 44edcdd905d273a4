"""Decoding: greedy, sampling filters, beam search and the three ways a sequence ends."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from torch import nn

from rnnkit.cells import GRUCell
from rnnkit.generate import Generated, NBest, generate, next_tokens, top_k_filter, top_p_filter

from .decoders import Out, Scripted, TinyDecoder


def seq_logprob(model, seq, bos=0):
    """log p(seq) by stepping the model on one sequence (the independent scorer)."""
    state, y, total = model.start(1), torch.tensor([bos]), 0.0
    for k in seq:
        out, state = model.step(y, state)
        total += float(out.logits.detach().double().log_softmax(-1)[0, k])
        y = torch.tensor([k])
    return total


def test_greedy_equals_beam_of_width_one():
    for seed in range(4):
        model = TinyDecoder(seed=seed)
        g = generate(model, 3, max_length=12, method="greedy")
        b = generate(model, 3, max_length=12, method="beam", beam_width=1)
        torch.testing.assert_close(b.tokens, g.tokens)
        torch.testing.assert_close(b.lengths, g.lengths)
        torch.testing.assert_close(b.scores, g.scores, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_finds_the_best_sequence_among_all(alpha):
    V, L = 4, 4  # tokens 0..3, eos = 1: every sequence of ≤ 4 tokens can be enumerated
    model = TinyDecoder(vocab=V, seed=3)
    candidates = []
    for n in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=n):
            ends_by_eos = seq[-1] == 1
            if 1 in seq[:-1] or (n < L and not ends_by_eos):
                continue  # EOS only last; shorter than L only if it ends with EOS
            candidates.append(seq)
    scored = [(seq_logprob(model, s) / len(s) ** alpha, s) for s in candidates]
    best_score, best = max(scored)
    result = generate(model, 1, max_length=L, method="beam", beam_width=V**L, length_penalty=alpha)
    assert tuple(result.tokens[0, : result.lengths[0]].tolist()) == best
    assert result.scores[0].item() == pytest.approx(best_score, abs=1e-9)
    narrow = generate(model, 1, max_length=L, method="beam", beam_width=2, length_penalty=alpha)
    assert narrow.scores[0].item() <= best_score + 1e-9


def all_sequences(V, L, eos=1):
    """Every sequence generation with end='eos' can return: EOS only last, shorter than L only if it ends by EOS."""
    for n in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=n):
            if eos not in seq[:-1] and (n == L or seq[-1] == eos):
                yield seq


def context_logprob(model, seq, context, bos=0):
    """log p(seq | context) by stepping the model on one sequence (the independent scorer)."""
    state, y, total = model.start(1, context=context), torch.tensor([bos]), 0.0
    for k in seq:
        out, state = model.step(y, state)
        total += float(out.logits.detach().double().log_softmax(-1)[0, k])
        y = torch.tensor([k])
    return total


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_n_best_are_the_k_best_sequences_among_all(alpha):
    V, L, K = 4, 4, 6  # a beam as wide as the whole tree keeps every hypothesis, so its K best are exact
    model = TinyDecoder(vocab=V, seed=3).double()  # float64: the batched search and the one-row scorer agree to 1e-9
    ctx = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = generate(model, max_length=L, method="beam", beam_width=V**L, length_penalty=alpha, n_best=K, context=ctx)
    assert result.tokens.shape[:2] == (2, K) and result.lengths.shape == result.scores.shape == (2, K)
    for b in range(2):
        scored = sorted(
            ((context_logprob(model, s, ctx[b : b + 1]) / len(s) ** alpha, s) for s in all_sequences(V, L)),
            reverse=True,
        )[:K]
        got = [tuple(result.tokens[b, k, : result.lengths[b, k]].tolist()) for k in range(K)]
        assert got == [s for _, s in scored]
        torch.testing.assert_close(
            result.scores[b], torch.tensor([x for x, _ in scored], dtype=torch.float64), rtol=0, atol=1e-9
        )
        assert all((result.tokens[b, k, result.lengths[b, k] :] == 0).all() for k in range(K))  # padded after each end


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_n_best_leads_with_the_single_answer_and_ranks_by_score(alpha):
    model = TinyDecoder(seed=5).double()
    ctx = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    one = generate(model, max_length=8, method="beam", beam_width=4, length_penalty=alpha, context=ctx)
    best = generate(model, max_length=8, method="beam", beam_width=4, length_penalty=alpha, context=ctx, n_best=3)
    assert isinstance(one, Generated) and isinstance(best, NBest)  # n_best=1 keeps the return type
    torch.testing.assert_close(best.lengths[:, 0], one.lengths)
    torch.testing.assert_close(best.scores[:, 0], one.scores, rtol=0, atol=0)
    for b in range(3):
        n = int(one.lengths[b])
        torch.testing.assert_close(best.tokens[b, 0, :n], one.tokens[b, :n])
        assert len({tuple(best.tokens[b, k, : best.lengths[b, k]].tolist()) for k in range(3)}) == 3  # distinct
    assert (best.scores[:, :-1] >= best.scores[:, 1:]).all()
    for b in range(3):  # each score is the hypothesis' own log p / L^α
        for k in range(3):
            seq = best.tokens[b, k, : best.lengths[b, k]].tolist()
            expected = context_logprob(model, seq, ctx[b : b + 1]) / len(seq) ** alpha
            assert best.scores[b, k].item() == pytest.approx(expected, abs=1e-9)


def test_n_best_beyond_the_hypotheses_that_exist_are_empty_with_score_minus_infinity():
    model = TinyDecoder(vocab=4, seed=3)
    r = generate(model, 1, max_length=1, method="beam", beam_width=6, n_best=6)  # one step: only 4 sequences exist
    assert r.lengths[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert sorted(r.tokens[0, :4, 0].tolist()) == [0, 1, 2, 3]
    assert r.scores[0, 3] > float("-inf") and r.scores[0, 4:].tolist() == [float("-inf")] * 2


def test_beam_is_batched_like_one_by_one():
    model = TinyDecoder(seed=5)
    ctx = torch.randn(3, 8)
    both = generate(model, max_length=8, method="beam", beam_width=3, context=ctx)
    for b in range(3):
        one = generate(model, max_length=8, method="beam", beam_width=3, context=ctx[b : b + 1])
        n = int(one.lengths[0])
        assert both.lengths[b] == n
        torch.testing.assert_close(both.tokens[b, :n], one.tokens[0, :n])


def test_top_k_one_and_near_zero_temperature_equal_greedy():
    model = TinyDecoder(seed=1)
    g = generate(model, 4, max_length=10, method="greedy")
    gen = torch.Generator().manual_seed(0)
    k1 = generate(model, 4, max_length=10, method="sample", top_k=1, generator=gen)
    cold = generate(model, 4, max_length=10, method="sample", temperature=1e-4, generator=gen)
    tiny_p = generate(model, 4, max_length=10, method="sample", top_p=1e-6, generator=gen)
    for r in (k1, cold, tiny_p):
        torch.testing.assert_close(r.tokens, g.tokens)


def test_top_k_and_top_p_filters_match_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(5, 9)
    kept = top_k_filter(logits, 3) > float("-inf")
    for row, keep in zip(logits, kept):
        assert set(keep.nonzero().flatten().tolist()) == set(row.topk(3).indices.tolist())
    p = 0.7
    kept = top_p_filter(logits, p) > float("-inf")
    for row, keep in zip(logits, kept):
        probs = row.softmax(-1)
        order = probs.argsort(descending=True).tolist()
        need, mass = [], 0.0
        for i in order:  # the smallest prefix of the sorted tokens with mass ≥ p
            need.append(i)
            mass += float(probs[i])
            if mass >= p:
                break
        assert set(keep.nonzero().flatten().tolist()) == set(need)


def test_sampling_draws_from_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, 4)
    gen = torch.Generator().manual_seed(0)
    draws = next_tokens(logits, "sample", temperature=2.0, generator=gen)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, (logits[0] / 2.0).double().softmax(-1), atol=0.015, rtol=0)


def test_same_generator_seed_same_samples():
    model = TinyDecoder(seed=2)
    a = generate(model, 3, max_length=9, generator=torch.Generator().manual_seed(7))
    b = generate(model, 3, max_length=9, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.tokens, b.tokens)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_eos_stops_each_sequence_where_it_is_emitted(method):
    model = Scripted([[2, 3, 5, 4, 4, 4], [4, 5, 2, 2, 2, 2]])
    r = generate(model, 2, max_length=6, method=method, beam_width=2)
    assert r.lengths.tolist() == [3, 2]
    assert r.tokens.tolist() == [[2, 3, 5], [4, 5, 0]]  # EOS kept, padding after


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_halt_output_stops_after_the_step_it_crosses_one_half(method):
    model = Scripted([[2, 3, 4, 2, 3]] * 2, halts=[[-3, -2, 4, -1, 5], [-5, 6, -2, 2, -1]])
    r = generate(model, 2, max_length=5, method=method, end="halt", beam_width=2)
    assert r.lengths.tolist() == [3, 2]
    assert r.tokens.tolist() == [[2, 3, 4], [2, 3, 0]]


def test_halt_can_be_sampled():
    model = Scripted([[2] * 8] * 4000, halts=[[0.0] * 8] * 4000)  # P(halt) = 1/2 at every step
    r = generate(
        model,
        4000,
        max_length=8,
        method="greedy",
        end="halt",
        halt_sample=True,
        generator=torch.Generator().manual_seed(0),
    )
    # lengths are geometric(1/2), truncated at 8: P(L = 1) = 1/2, P(L = 2) = 1/4
    assert abs((r.lengths == 1).double().mean().item() - 0.5) < 0.03
    assert abs((r.lengths == 2).double().mean().item() - 0.25) < 0.03


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_predicted_length_stops_after_tau_steps(method):
    model = Scripted([[2, 3, 4, 2, 3, 4]] * 3, tau=[2, 5, 9])
    r = generate(model, 3, max_length=6, method=method, end="length", beam_width=2)
    assert r.lengths.tolist() == [2, 5, 6]  # max_length bounds τ = 9


def test_max_length_always_bounds():
    r = generate(TinyDecoder(seed=4), 2, max_length=3, method="sample", end=None)
    assert r.tokens.shape == (2, 3) and r.lengths.tolist() == [3, 3]


def test_priming_continues_from_the_primed_state():
    model = TinyDecoder(seed=6)
    prime = torch.tensor([[0, 2, 3], [0, 4, 4]])
    primed = generate(model, max_length=5, method="greedy", prime=prime, end=None)
    # the same by hand: step through the prefix, then argmax onward
    state, y = model.start(2), None
    for y in prime.unbind(1):
        out, state = model.step(y, state)
    expect = []
    for _ in range(5):
        y = out.logits.argmax(-1)
        expect.append(y)
        out, state = model.step(y, state)
    torch.testing.assert_close(primed.tokens, torch.stack(expect, 1))


def test_context_conditions_generation():
    model = TinyDecoder(seed=8)
    a = generate(model, max_length=6, method="greedy", context=torch.randn(2, 8), end=None)
    b = generate(model, max_length=6, method="greedy", context=torch.randn(2, 8) * 3, end=None)
    assert a.tokens.shape == (2, 6) and not torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_k=0), "top_k must be an int ≥ 1, got 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(temperature=0), "temperature must be a number > 0, got 0"),
        (dict(max_length=0), "max_length must be an int ≥ 1, got 0"),
        (dict(method="nucleus"), "method must be one of 'greedy', 'sample', 'beam', got 'nucleus'"),
        (dict(method="beam", beam_width=0), "beam_width must be an int ≥ 1, got 0"),
        (dict(method="beam", n_best=0), "n_best must be an int ≥ 1, got 0"),
        (dict(method="greedy", n_best=2), "n_best=2 needs method='beam'.*got 'greedy'"),
        (dict(method="beam", beam_width=3, n_best=4), "n_best must be ≤ beam_width .* got n_best=4 and beam_width=3"),
        (dict(end="stop"), "end must be one of"),
        (dict(end="halt"), "needs a model with a halt output"),
        (dict(end="length"), "needs a model with a length head"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    kwargs = {"max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(TinyDecoder(), 2, **kwargs)


def test_eos_end_without_an_eos_token_is_refused():
    model = TinyDecoder()
    model.eos = None
    with pytest.raises(ValueError, match="end='eos' needs an eos token"):
        generate(model, 1, max_length=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["sample", "greedy", "beam"])
def test_a_model_on_cuda_takes_a_prime_from_the_cpu_and_a_cpu_generator(method):
    """The same float64 model on the CPU and on CUDA, primed with a CPU tensor and sampled with a
    CPU generator seeded alike: the same tokens (the draws are made on the generator's device)."""
    from rnnkit.tasks.charlm import CharLM, CharLMConfig

    torch.manual_seed(0)
    cpu = CharLM(7, CharLMConfig(hidden_size=12, num_layers=2, embedding_size=5)).double()
    cuda = CharLM(7, CharLMConfig(hidden_size=12, num_layers=2, embedding_size=5)).double().cuda()
    cuda.load_state_dict(cpu.state_dict())
    prime = torch.tensor([[1, 2, 3], [4, 5, 6]])
    runs = [
        generate(
            m,
            max_length=20,
            method=method,
            end=None,
            prime=prime,
            temperature=1.5,
            generator=torch.Generator().manual_seed(5),
        )
        for m in (cpu, cuda)
    ]
    assert runs[1].tokens.device.type == "cuda"
    torch.testing.assert_close(runs[1].tokens.cpu(), runs[0].tokens, rtol=0, atol=0)
    torch.testing.assert_close(runs[1].scores.cpu(), runs[0].scores, rtol=1e-9, atol=1e-9)


def test_without_a_method_a_translator_decodes_greedily_and_a_language_model_samples():
    from rnnkit import Encoder, GRUCell, Seq2Seq
    from tests.helpers import randomize_

    torch.manual_seed(0)
    translator = randomize_(
        Seq2Seq(Encoder(GRUCell(4, 6), vocab_size=7), GRUCell(4, 6), 7, 4, bos=1, eos=2), scale=1.5, seed=3
    )
    src = torch.randint(3, 7, (5, 6))
    memory = translator.encode(src, torch.tensor([5, 4, 3, 5, 2, 1]))
    default = generate(translator, max_length=8, context=memory)
    greedy = generate(translator, max_length=8, context=memory, method="greedy")
    assert torch.equal(default.tokens, greedy.tokens) and torch.equal(default.lengths, greedy.lengths)
    # a sampling option asks for draws: the old default kept for calls that pass one
    drawn = generate(
        translator, max_length=8, context=memory, temperature=3.0, generator=torch.Generator().manual_seed(1)
    )
    want = generate(
        translator,
        max_length=8,
        context=memory,
        method="sample",
        temperature=3.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(drawn.tokens, want.tokens) and not torch.equal(drawn.tokens, greedy.tokens)
    # a model that declares no default_method (a language model) still samples
    lm = TinyDecoder(seed=2)
    torch.manual_seed(5)
    a = generate(lm, 6, max_length=9)
    torch.manual_seed(5)
    b = generate(lm, 6, max_length=9, method="sample")
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(
        a.tokens, generate(lm, 6, max_length=9, method="greedy").tokens
    )


# -- the decoding loops' shortcuts equal what they stand for ------------------------------------


class PassThrough(nn.Module):
    """A decoder whose state holds, besides h, a per-row tensor m that conditions every step and
    that the step passes through as it is, except every third step, where it writes a new one
    from h: beam search may skip reordering m only while it is passed through."""

    def __init__(self, vocab: int = 5, hidden: int = 6):
        super().__init__()
        torch.manual_seed(11)
        self.bos, self.eos = 0, 1
        self.embed = nn.Embedding(vocab, hidden)
        self.cell = GRUCell(2 * hidden, hidden)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.head.weight.mul_(4)

    def start(self, batch_size, context=None):
        return (torch.zeros(batch_size, self.cell.hidden_size), torch.tanh(context), torch.zeros(batch_size))

    def step(self, y_prev, state):
        h, m, t = state
        h, _ = self.cell(torch.cat([self.embed(y_prev), m], -1), (h,))  # (B, H)
        if int(t[0]) % 3 == 2:
            m = torch.tanh(h + m)  # a new m, different in each hypothesis, different in each hypothesis
        return Out(self.head(h), None), (h, m, t + 1)


@pytest.mark.parametrize("alpha, n_best", [(0.0, 1), (1.0, 3)])
def test_beam_skips_reordering_only_what_a_step_passes_through(alpha, n_best, monkeypatch):
    """Against the same search reordering every tensor of the state at every step."""
    gen = importlib.import_module("rnnkit.generate")  # the module (the package's generate is the function)

    ctx = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    kw = dict(max_length=10, method="beam", beam_width=3, length_penalty=alpha, n_best=n_best, context=ctx)
    fast = generate(PassThrough(), **kw)
    monkeypatch.setattr(gen, "_reorder_beams", lambda leaves, index, shared: [t.index_select(0, index) for t in leaves])
    every = generate(PassThrough(), **kw)
    assert fast.lengths.float().std() > 0  # hypotheses of several lengths: the search made choices
    for a, b in zip(fast, every):
        assert torch.equal(a, b)


def test_beam_top_extensions_for_eos_equal_the_full_search_also_on_ties():
    """The top W over the compact layout (the "end here" scores other than EOS's left out) are
    the full layout's topk: the same values and, mapped back, the same indices — and on ties
    among the W + 1 best, the full search itself."""
    from rnnkit.generate import _top_eos

    B, W, V, eos = 64, 3, 5, 2
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        score = torch.randn(B, W, generator=g, dtype=torch.float64)
        score[: B // 4, 1:] = float("-inf")  # rows with one live hypothesis
        logp = torch.randn(B, W, V, generator=g, dtype=torch.float64).log_softmax(-1)
        if trial % 2:
            logp = logp.round(decimals=1)  # many exact ties
            score = score.round(decimals=1)
        full = torch.full((B, 2, W, V), float("-inf"), dtype=torch.float64)
        full[:, 0] = score.unsqueeze(-1) + logp
        full[:, 1, :, eos] = full[:, 0, :, eos]
        full[:, 0, :, eos] = float("-inf")
        want_top, want_idx = full.view(B, -1).topk(W, dim=-1)
        candidates = torch.full((B, 2, W, V), float("-inf"), dtype=torch.float64)
        top, idx = _top_eos(torch.empty(B, W * V + W, dtype=torch.float64), candidates, score, logp, eos)
        assert torch.equal(top, want_top)
        finite = want_top > float("-inf")  # which −∞ entry fills a row short of W is of no consequence
        assert torch.equal(idx[finite], want_idx[finite])


def test_greedy_lengths_tokens_and_scores_are_those_of_each_sequence_alone():
    """Each row's tokens up to its end, its length (EOS counted) and its score, the sum of the
    log-probabilities of its tokens with the row stepped alone by hand."""
    model = TinyDecoder(vocab=6, seed=2)
    ctx = 3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    g = generate(model, max_length=9, method="greedy", context=ctx)
    assert g.lengths.min() < g.lengths.max()  # rows end at different steps
    for b in range(16):
        n = int(g.lengths[b])
        seq = g.tokens[b, :n].tolist()
        assert model.eos not in seq[:-1] and (n == 9 or seq[-1] == model.eos)
        assert g.tokens[b, n:].eq(0).all()
        state, y, total = model.start(1, context=ctx[b : b + 1]), torch.tensor([model.bos]), 0.0
        with torch.no_grad():
            for k in seq:
                out, state = model.step(y, state)
                logp = out.logits.double().log_softmax(-1)[0]
                assert int(logp.argmax()) == k
                total += float(logp[k])
                y = torch.tensor([k])
        assert g.scores[b].item() == pytest.approx(total, abs=1e-5)  # float32 logits, batched vs alone
