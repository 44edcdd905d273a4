r"""Generation: greedy, sampling (temperature, top-k, top-p) and beam search, for any model that
decodes one step at a time.

The decoding protocol (implemented by rnnkit's decoders, :mod:`rnnkit.models`, and the char-LM):

* ``model.start(batch_size, context=None) -> state`` — the state before the first step. Every
  tensor in it has the batch on dimension 0, so beams are reordered with ``index_select``.
* ``model.step(y_prev, state) -> (out, state)`` — one step from the previous output ((B,) token
  ids); ``out.logits`` is (B, V) and ``out.halt`` (optional) the (B,) halt logit,
  :math:`P(\text{end after this step}) = \sigma(\text{halt})`. The step returns a new state and
  leaves the tensors of the one it was given as they are: a tensor it passes on unchanged (the
  same object, such as an encoder's memory) is one beam search need not reorder.
* optional ``model.bos`` / ``model.eos`` token ids, ``model.predict_length(state) -> (B,)`` for a
  model with a length head (its ``step`` reads the remaining steps τ − t from its own state).

How a sequence ends (``end``): ``"eos"`` — when the model emits ``eos`` (kept in the output);
``"halt"`` — when the halt probability crosses 0.5 (or, with ``halt_sample=True``, a Bernoulli
draw says so), the token of that step included; ``"length"`` — after the model's predicted τ
steps; ``None`` — never early. ``max_length`` always bounds it.

Symbols: B batch, W beam width, V vocabulary, L generated length, P prime length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells.state import map_state, rebuild_state, state_tensors
from .train.device import model_device, to_device

METHODS = ("greedy", "sample", "beam")
ENDS = ("eos", "halt", "length", None)


class Generated(NamedTuple):
    """What :func:`generate` returns.

    tokens (B, L) int64, padded with ``pad`` after each sequence's end; lengths (B,) the number of
    generated tokens of each (EOS included); scores (B,) the total log-probability of each
    sequence under the model (for beam search, the score it was ranked by, length-normalised).
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor


class NBest(NamedTuple):
    """What :func:`generate` returns for beam search with ``n_best`` = K > 1: the K best ended
    hypotheses of each sequence, best first.

    tokens (B, K, L) int64, padded with ``pad`` after each hypothesis' end; lengths (B, K) the
    number of tokens of each (EOS included); scores (B, K) float64, each the score it was ranked
    by, log p(y) / L^α. Where fewer than K hypotheses ended within ``max_length``, the missing
    ones have length 0 and score −∞.
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor


# -- choosing the next token --------------------------------------------------------------------
def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row; the rest become −∞. logits (B, V)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int ≥ 1, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability sums to at least p; the rest become −∞. logits (B, V)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    # drop a token when the tokens before it already reach p (the first token always stays)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float if it is > 0, else a ValueError saying so."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


def next_tokens(
    logits: Tensor,
    method: str = "sample",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of ``logits`` (B, V): argmax (``"greedy"``) or a draw from
    softmax(logits / temperature) after the top-k and top-p filters (``"sample"``). Returns (B,),
    on the device of ``logits``.

    A ``generator`` on another device than ``logits`` (a CPU generator, model on a GPU) draws on
    its own device, so a seed gives the same draws from the same probabilities wherever the
    model runs."""
    if method == "greedy":
        return logits.argmax(-1)
    if method != "sample":
        raise ValueError(f"method must be 'greedy' or 'sample', got {method!r}")
    logits = logits / check_temperature(temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def default_method(model: nn.Module, **sampling: Any) -> str:
    """What :func:`generate` does when no ``method`` is given: ``"sample"`` if any of the
    ``sampling`` options (temperature, top_k, top_p, generator) is set, so a call that asks for
    draws gets them; else ``model.default_method`` if the model declares one (``"greedy"`` for
    :class:`rnnkit.Seq2Seq`), else ``"sample"``."""
    if any(v is not None for v in sampling.values()):
        return "sample"
    method = getattr(model, "default_method", "sample")
    if method not in METHODS:
        raise ValueError(
            f"{type(model).__name__}.default_method must be one of {', '.join(map(repr, METHODS))}, got {method!r}"
        )
    return method


# -- the decoding loop ----------------------------------------------------------------------------
def reorder_state(state: Any, index: Tensor) -> Any:
    """Pick batch rows ``index`` of every tensor of a decoding state (beam reordering)."""
    return map_state(lambda t: t.index_select(0, index), state)


def _reorder_beams(leaves: list[Tensor], index: Tensor, shared: list[bool]) -> list[Tensor]:
    """:func:`reorder_state` within each sequence's W hypotheses, on a state's tensors (``leaves``,
    as :func:`rnnkit.cells.state.state_tensors` lists them), except for those marked in
    ``shared``: each of those holds W equal rows per sequence, so picking among them would copy
    the same values (an encoder's memory, its attention keys and mask are most of a seq2seq
    state)."""
    return [t if keep else t.index_select(0, index) for t, keep in zip(leaves, shared)]


def _still_shared(shared: list[bool], before: list[Tensor], after: Any) -> tuple[list[Tensor], list[bool]]:
    """The tensors of the state a step returned, and which of them still hold W equal rows per
    sequence: those that held them before (``before``, the tensors the step was given) and that
    the step passed through as they were (the same tensor)."""
    new = state_tensors(after)
    if len(new) != len(before):
        return new, [False] * len(new)
    return new, [keep and n is o for keep, n, o in zip(shared, new, before)]


def _top_eos(compact: Tensor, candidates: Tensor, score: Tensor, logp: Tensor, eos: int) -> tuple[Tensor, Tensor]:
    """The W best extensions, as ``candidates.view(B, -1).topk(W)`` finds them, for end="eos".

    Each extension scores score (B, W) + logp (B, W, V), EOS's included; EOS's "end here"
    is the only finite entry of the second half of ``candidates`` (B, 2, W, V), so the top W are
    looked for among the W·V + W entries of ``compact`` (B, W·V + W), about half as many, and
    their indices mapped back. That is the same answer unless two finite scores tie among the
    W + 1 best (or one is NaN): which of equal entries topk returns depends on the layout, so
    then ``candidates`` is filled and searched as it is.
    """
    B, W, V = logp.shape
    go, end_here = compact[:, : W * V].view(B, W, V), compact[:, W * V :]
    torch.add(score.unsqueeze(-1), logp, out=go)
    end_here.copy_(go[..., eos])
    go[..., eos] = float("-inf")
    top, idx = compact.topk(W + 1, dim=-1)  # (B, W + 1)
    tie = (top[:, :-1] == top[:, 1:]) & (top[:, 1:] > float("-inf"))
    if bool(tie.any() | top.isnan().any()):
        candidates[:, 0].copy_(go)
        candidates[:, 1, :, eos] = end_here
        return candidates.view(B, -1).topk(W, dim=-1)
    top, idx = top[:, :W], idx[:, :W]
    # "end here" of hypothesis w sits at W·V + w in compact, at W·V + w·V + eos in candidates
    return top, torch.where(idx >= W * V, W * V + (idx - W * V) * V + eos, idx)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return value


def _start(model: nn.Module, batch_size: int | None, context: Any, prime: Tensor | None):
    """Start state and the first input of each row; with ``prime`` (B, P), the prefix is fed first.

    Returns (state, first_out, batch_size) where first_out is the model's output after the prefix
    (None without a prime: the first input is then ``model.bos``). ``prime`` and ``context`` may
    be given on another device than the model's (the CPU): they are moved to it.
    """
    device = model_device(model)
    context = to_device(context, device)
    if prime is not None:
        if not isinstance(prime, Tensor) or prime.dim() != 2 or prime.dtype != torch.long or prime.shape[1] < 1:
            got = f"{tuple(prime.shape)} {prime.dtype}" if isinstance(prime, Tensor) else type(prime).__name__
            raise ValueError(f"prime must be an int64 tensor of shape (B, P) with P ≥ 1, got {got}")
        if batch_size is not None and batch_size != prime.shape[0]:
            raise ValueError(f"batch_size={batch_size} but prime has {prime.shape[0]} rows")
        batch_size = prime.shape[0]
        prime = prime.to(device)
    state = model.start(batch_size, context=context) if context is not None else model.start(batch_size)
    if prime is None:
        if getattr(model, "bos", None) is None:
            raise ValueError(f"{type(model).__name__} has no bos token: give a prime (B, P) to start from")
        return state, None, batch_size
    out = None
    for y in prime.unbind(1):  # the model's own stepping, so priming is exactly generation's state
        out, state = model.step(y, state)
    return state, out, batch_size


def _ends(model: nn.Module, end: str | None, eos: int | None):
    if end not in ENDS:
        raise ValueError(f"end must be one of 'eos', 'halt', 'length' or None, got {end!r}")
    if end == "eos":
        eos = eos if eos is not None else getattr(model, "eos", None)
        if eos is None:
            raise ValueError(f"end='eos' needs an eos token: {type(model).__name__} has none and none was given")
    if end == "length" and not hasattr(model, "predict_length"):
        raise ValueError(
            f"end='length' needs a model with a length head (predict_length); {type(model).__name__} has none"
        )
    return eos


def _halt_logit(out: Any, model: nn.Module) -> Tensor:
    halt = getattr(out, "halt", None)
    if halt is None:
        raise ValueError(f"end='halt' needs a model with a halt output; {type(model).__name__}'s step returned none")
    return halt


@torch.no_grad()
def generate(
    model: nn.Module,
    batch_size: int | None = None,
    *,
    max_length: int,
    method: str | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int = 4,
    length_penalty: float = 0.0,
    n_best: int = 1,
    end: str | None = "eos",
    eos: int | None = None,
    halt_sample: bool = False,
    context: Any = None,
    prime: Tensor | None = None,
    pad: int = 0,
    generator: torch.Generator | None = None,
) -> Generated:
    r"""Generate up to ``max_length`` tokens per sequence from a model that decodes step by step.

    Args:
        model: follows the decoding protocol (see the module docstring).
        batch_size: number of sequences (B); taken from ``prime`` or ``context`` when given.
        max_length: the bound on generated tokens (L ≤ max_length).
        method: ``"greedy"`` (argmax), ``"sample"`` (temperature, top-k, top-p) or ``"beam"``.
            None (the default): ``"sample"`` when a sampling option (``temperature``,
            ``top_k``, ``top_p``, ``generator``) is given, else the model's
            ``default_method`` — ``"greedy"`` for a translator (:class:`rnnkit.Seq2Seq`), whose
            one right answer should not change from call to call — and ``"sample"`` for a
            model that declares none (a language model, whose samples should vary).
        temperature: divides the logits before sampling (None: 1).
        beam_width, length_penalty: beam search keeps W hypotheses per sequence and ranks
            finished ones by :math:`\log p(y) / L^{\alpha}` with α = ``length_penalty`` (0: raw
            log-probability; 1: per-token average).
        n_best: K, how many of the best ended hypotheses beam search returns (1 ≤ K ≤ W);
            only with ``method="beam"``. K > 1 returns :class:`NBest` instead of
            :class:`Generated`.
        end: ``"eos"``, ``"halt"``, ``"length"`` or None (see the module docstring).
        eos: the end token (default ``model.eos``).
        halt_sample: with ``end="halt"``, draw the halt decision from Bernoulli(σ(halt)) instead
            of thresholding at 0.5.
        context: conditioning passed to ``model.start`` (a vector (B, C) or an encoder's output);
            moved to the model's device.
        prime: (B, P) token ids fed first; generation continues after them (not returned); moved
            to the model's device.
        pad: the id written after a sequence's end in ``tokens``.
        generator: the random source for sampling; a CPU generator also serves a model on a
            GPU (the draws are made on the CPU).

    Returns:
        :class:`Generated` (tokens (B, L), lengths (B,), scores (B,)); for beam search with
        ``n_best`` = K > 1, :class:`NBest` (tokens (B, K, L), lengths (B, K), scores (B, K)),
        the K best hypotheses of each sequence, best first, whose first is the
        ``n_best=1`` answer.
    """
    _check_int(max_length, "max_length", 1)
    if method is None:
        method = default_method(model, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    temperature = 1.0 if temperature is None else temperature
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    _check_int(n_best, "n_best", 1)
    if n_best > 1 and method != "beam":
        raise ValueError(
            f"n_best={n_best} needs method='beam' (the other methods make one sequence per row), got {method!r}"
        )
    if method == "sample":
        check_temperature(temperature)
        if top_k is not None:
            _check_int(top_k, "top_k", 1)
        if top_p is not None:
            top_p_filter(torch.zeros(1, 1), top_p)  # validates p
    eos = _ends(model, end, eos)
    if batch_size is None and prime is None and context is not None:
        leaves = state_tensors(context) if isinstance(context, tuple) else [context]
        batch_size = next((t.shape[0] for t in leaves if isinstance(t, Tensor)), None)
    if batch_size is None and prime is None:
        raise ValueError("give batch_size, a prime (B, P) or a context tensor (B, C)")
    was_training = model.training
    model.eval()
    try:
        if method == "beam":
            _check_int(beam_width, "beam_width", 1)
            if n_best > beam_width:
                raise ValueError(
                    f"n_best must be ≤ beam_width (the beam holds the candidates), got n_best={n_best} "
                    f"and beam_width={beam_width}"
                )
            return _beam(
                model, batch_size, max_length, beam_width, length_penalty, end, eos, context, prime, pad, n_best
            )
        return _step_decode(
            model,
            batch_size,
            max_length,
            method,
            temperature,
            top_k,
            top_p,
            end,
            eos,
            halt_sample,
            context,
            prime,
            pad,
            generator,
        )
    finally:
        model.train(was_training)


def _limits(model: nn.Module, end: str | None, state: Any, batch_size: int, max_length: int, device) -> Tensor:
    """Each sequence's length bound: max_length, or the model's predicted τ when end='length'."""
    limit = torch.full((batch_size,), max_length, dtype=torch.long, device=device)
    if end == "length":
        tau = model.predict_length(state).to(device=device, dtype=torch.long)
        limit = torch.minimum(limit, tau.clamp(min=1))
    return limit


def _first_input(model, batch_size, device):
    return torch.full((batch_size,), int(model.bos), dtype=torch.long, device=device)


def _step_decode(
    model,
    batch_size,
    max_length,
    method,
    temperature,
    top_k,
    top_p,
    end,
    eos,
    halt_sample,
    context,
    prime,
    pad,
    generator,
) -> Generated:
    device = next(model.parameters()).device
    state, out, batch_size = _start(model, batch_size, context, prime)
    limit = _limits(model, end, state, batch_size, max_length, device)
    if out is None:
        out, state = model.step(_first_input(model, batch_size, device), state)
    # each step only chooses and tests for the end; what is kept of it (the token, the step's
    # score terms, which rows had ended) is laid out into tokens, lengths and scores once, after
    # the loop, so a step costs about what a hand-written decoding loop's does
    ys, terms, ended = [], [], []  # per step: y (B,), its score terms (B,) float64, done after it (B,)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for t in range(max_length):
        y = next_tokens(out.logits, method, temperature, top_k, top_p, generator)  # (B,)
        logits = out.logits.double()  # scores in float64, as beam search keeps them
        terms.append(logits.gather(1, y.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1))  # log p(y)
        # a row's length reaches its limit at this step: max_length bounds the loop itself, so
        # only the predicted lengths need a test
        stop = limit <= t + 1 if end == "length" else None
        if end == "eos":
            stop = y == eos
        elif end == "halt":
            p_halt = torch.sigmoid(_halt_logit(out, model).double())
            halts = _bernoulli(p_halt, generator).bool() if halt_sample else p_halt > 0.5
            stop = halts
            terms.append(torch.where(halts, p_halt.log(), (-p_halt).log1p()))  # log P(halt decision)
        ys.append(y)
        if stop is not None:
            done = done | stop
        ended.append(done)
        if t + 1 == max_length or bool(done.all()):
            break
        out, state = model.step(y, state)
    T = len(ys)
    # row b is live at step t until the step after the one where it ended
    live = torch.cat([torch.ones(1, batch_size, dtype=torch.bool, device=device), ~torch.stack(ended)[:-1]])  # (T, B)
    tokens = torch.where(live, torch.stack(ys), torch.full_like(live, pad, dtype=torch.long)).t()  # (B, T)
    lengths = live.sum(0)  # (B,)
    per_term = live.repeat_interleave(len(terms) // T, dim=0)  # (T·k, B): k score terms per step
    masked = torch.where(per_term, torch.stack(terms), torch.zeros((), dtype=torch.float64, device=device))
    scores = masked.cumsum(0)[-1]  # summed in step order, as a running total would
    L = int(lengths.max())
    return Generated(tokens[:, :L].contiguous(), lengths, scores)


def _bernoulli(p: Tensor, generator: torch.Generator | None) -> Tensor:
    """Bernoulli(p) draws on ``generator``'s device (as :func:`next_tokens` does), on p's device."""
    if generator is not None and generator.device != p.device:
        return torch.bernoulli(p.to(generator.device), generator=generator).to(p.device)
    return torch.bernoulli(p, generator=generator)


def _beam(model, batch_size, max_length, W, alpha, end, eos, context, prime, pad, K=1) -> Generated | NBest:
    """Batched beam search (W hypotheses per sequence), returning the K best that ended.

    Each step scores every extension of every live hypothesis two ways — "emit k and go on" and
    "emit k and end here" (k = EOS; or the halt event, log σ(halt) vs log(1 − σ(halt)); or the
    length bound) — and keeps the W best of them all. Those that end leave the beam and compete,
    ranked by log p / L^α, for the K places of the answer (on a tie the one that ended first
    keeps its place); the beam shrinks as they do, so width 1 is exactly greedy decoding. With
    α = 0 a search stops once no live hypothesis can beat the K-th best ended one.
    """
    device = next(model.parameters()).device
    state, out, B = _start(model, batch_size, context, prime)
    limit = _limits(model, end, state, B, max_length, device)  # (B,)
    if out is None:
        out, state = model.step(_first_input(model, B, device), state)
    if end == "halt":
        _halt_logit(out, model)
    V = out.logits.shape[-1]
    # W copies of each row; only copy 0 is live at first so the first step does not pick W equal beams
    expand = torch.arange(B, device=device).repeat_interleave(W)  # (B·W,)
    state = reorder_state(state, expand)
    leaves = state_tensors(state)
    shared = [True] * len(leaves)  # every tensor now holds W equal rows per sequence
    out = type(out)(*[None if f is None else f.index_select(0, expand) for f in out])
    score = torch.full((B, W), float("-inf"), dtype=torch.float64, device=device)
    score[:, 0] = 0.0
    history = torch.zeros(B, W, 0, dtype=torch.long, device=device)  # (B, W, t)
    best_tokens: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]  # [b][k], best first
    best_score = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
    rows = torch.arange(B, device=device).unsqueeze(1)  # (B, 1)
    first_row = rows * W  # (B, 1): where each sequence's hypotheses start in the (B·W,) state
    # every extension's score, "go on" then "end here", each (B, W, V), written in place each step;
    # with end="eos" only the EOS column of "end here" is ever finite, so the rest stays −∞
    candidates = torch.full((B, 2, W, V), float("-inf"), dtype=torch.float64, device=device)
    go_on, stop = candidates[:, 0], candidates[:, 1]
    # and, for end="eos", the same without those −∞: "go on" (B, W·V), then "end here" (B, W)
    compact = torch.empty(B, W * V + W, dtype=torch.float64, device=device) if end == "eos" else None
    for t in range(max_length):
        length = t + 1
        logp = out.logits.double().log_softmax(-1).view(B, W, V)  # (B, W, V)
        if end == "eos" and length < max_length:
            top, idx = _top_eos(compact, candidates, score, logp, eos)
        else:
            torch.add(score.unsqueeze(-1), logp, out=go_on)
            if end == "eos":
                stop[..., eos] = go_on[..., eos]
                go_on[..., eos] = float("-inf")
            elif end == "halt":
                h = out.halt.double().view(B, W, 1)
                torch.add(go_on, F.logsigmoid(h), out=stop)
                go_on.add_(F.logsigmoid(-h))
            if end == "length":
                at_limit = (length >= limit).view(B, 1, 1)  # the bound ends every extension
                stop.copy_(go_on.masked_fill(~at_limit, float("-inf")))  # stop holds nothing else with this end
                go_on.masked_fill_(at_limit, float("-inf"))
            elif length >= max_length:  # every row's bound is max_length: the same test, made once
                torch.maximum(stop, go_on, out=stop)
                go_on.fill_(float("-inf"))
            top, idx = candidates.view(B, -1).topk(W, dim=-1)  # (B, W)
        ended = idx >= W * V
        beam, tok = idx // V % W, idx % V  # (B, W): the hypothesis extended and the token
        history = torch.cat([history[rows, beam], tok.unsqueeze(-1)], -1)
        if bool(ended.any()):  # else none enters the answer: the merge below would keep best_score as it is
            ranked = torch.where(
                ended & (top > float("-inf")), top / (length**alpha), torch.full_like(top, float("-inf"))
            )
            # the K best of those kept so far and those that ended at this step; a stable sort keeps
            # the earlier on a tie. order < K: a kept hypothesis; order ≥ K: column order − K of ranked
            merged, order = torch.cat([best_score, ranked], 1).sort(dim=-1, descending=True, stable=True)  # (B, K + W)
            best_score, order = merged[:, :K], order[:, :K]
            enter = (order >= K).any(-1).nonzero().flatten()  # rows where one that ended enters
            if enter.numel():
                # one conversion to Python lists for all those rows, not one per hypothesis
                for b, picks, seqs in zip(enter.tolist(), order[enter].tolist(), history[enter].tolist()):
                    kept = best_tokens[b]
                    best_tokens[b] = [kept[i] if i < K else seqs[i - K] for i in picks]
            score = top.masked_fill(ended, float("-inf"))
        else:
            score = top
        live_best = score.amax(-1)  # (B,)
        finished = live_best == float("-inf")
        if alpha == 0:  # no live hypothesis can beat the K-th best ended one: its score can only fall
            finished |= live_best <= best_score[:, -1]
        if bool(finished.all()):
            break
        leaves = _reorder_beams(leaves, (first_row + beam).flatten(), shared)  # (B·W,)
        out, stepped = model.step(tok.flatten(), rebuild_state(state, leaves))
        state, leaves, shared = stepped, *_still_shared(shared, leaves, stepped)
    L = max(len(seq) for kept in best_tokens for seq in kept)
    padded = [[seq + [pad] * (L - len(seq)) for seq in kept] for kept in best_tokens]
    tokens = torch.tensor(padded, dtype=torch.long, device=device).view(B, K, L)  # one tensor, not one per hypothesis
    lengths = torch.tensor([[len(seq) for seq in kept] for kept in best_tokens], dtype=torch.long, device=device)
    if K == 1:
        return Generated(tokens[:, 0], lengths[:, 0], best_score[:, 0])
    return NBest(tokens, lengths, best_score)
