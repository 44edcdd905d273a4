r"""A translation-like task generated here: integers written in digits → English words
(``"1905"`` → ``"one thousand nine hundred five"``), by an encoder–decoder with optional
Bahdanau attention (:class:`rnnkit.models.Seq2Seq`). Source and target differ in length and
vocabulary (10 digits; letters, space and hyphen).

.. math::
    C = \mathrm{encoder}(x(1..S)), \qquad
    P(y(t) \mid y(<t), x) = \mathrm{softmax}\big(o(t)\big), \quad o(t) = \mathrm{decoder}(y(t-1), C, h(t-1)), \qquad
    L = -\tfrac{1}{\sum_b U_b} \textstyle\sum_{b,t} \log P(y_b(t) \mid y_b(<t), x_b)

Training is teacher-forced (one batched pass), or with ``--teacher-schedule`` scheduled
sampling (Bengio et al. 2015): at update i each step feeds the true previous character with
probability ε_i and the model's own argmax otherwise (:func:`rnnkit.train.rollout`, one step
at a time). Evaluation translates every held-out number by greedy decoding and by beam search
and scores both by exact match (the headline: greedy), character error rate, chrF and corpus
BLEU (:mod:`rnnkit.data.text`); the baseline spells each digit on its own ("305" → "three
zero five").

**Your own pairs** (``--data FILE``): a UTF-8 file of ``source<TAB>target`` lines
(:func:`rnnkit.data.pairs.read_pairs` says what it refuses, with the line number). Validation
and test pairs are ``--val-data`` / ``--test-data`` files, or held out of ``--data`` by a hash of
each source (``--val-fraction``, ``--test-fraction``: reproducible, whatever the seed or the line
order, and a source's several targets stay in one split). The vocabularies are built from the
training pairs (``--tokens chars`` or ``words``, ``--min-count``), with UNK for symbols they
lack, and saved in the checkpoint, so ``rnnkit sample RUN --prime TEXT`` and ``rnnkit eval RUN
[--data FILE]`` need only the run. The baseline copies the source.

In Python: :func:`translate` decodes a batch of sources (greedy by default) and
:func:`teacher_forced_nll` is the training loss; the guide ``docs/guides/seq2seq.md`` shows both.

Symbols: S source length, U target length (EOS included), B batch, E embedding, H hidden,
D the encoder's output width (H, or 2H bidirectional), V target vocabulary, A attention size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.corpus import DataError
from ..data.datasets import MAX_DIGITS, PairsData, Seq2SeqSplit, numbers_to_words, spell_digits
from ..data.pairs import encode_pairs, load_pairs, read_pairs
from ..data.text import BOS, EOS, UNK, TokenVocab, bleu, char_error_rate, chrf, exact_match
from ..generate import generate
from ..models import Encoder, Seq2Seq, sequence_nll
from ..train import SCHEDULES, StepResult, rollout
from ..train.device import model_device, to_device
from .base import Task, TaskConfig
from .batching import Minibatches, chunks

EVAL_BATCH = 500  # sentences decoded at once
LENGTH_MARGIN = 10  # characters a translation may run past the longest training target
# ε's parameter when --teacher-param is not given: constant ε = 1 (teacher forcing); linear
# ε_i = 1 − c·i reaching 0 after 20 000 updates; exponential ε_i = k^i halving every ~1 400;
# inverse sigmoid k / (k + e^{i/k}) crossing ½ near i = k ln k ≈ 3 100
DEFAULT_TEACHER_PARAM = {"constant": 1.0, "linear": 5e-5, "exponential": 0.9995, "inverse-sigmoid": 500.0}


@dataclass
class Seq2SeqConfig(TaskConfig):
    data: str | None = None  # your own pairs: a UTF-8 file of source<TAB>target lines; None: numbers → words
    val_data: str | None = None  # validation pairs file (with --data); None: held out of --data by --val-fraction
    test_data: str | None = None  # test pairs file (with --data); None: held out of --data by --test-fraction
    val_fraction: float = 0.1  # share of --data's sources held out for validation (by a hash of the source)
    test_fraction: float = 0.1  # share of --data's sources held out for test (by a hash of the source)
    tokens: str = "chars"  # with --data, what a symbol is: chars, or words (split on whitespace)
    min_count: int = 1  # with --data, symbols seen fewer times in training become UNK
    n_train: int = 20_000  # numbers task: training pairs (distinct numbers)
    n_val: int = 500  # numbers task: validation pairs, numbers not in training
    n_test: int = 1_000  # numbers task: test pairs, numbers in neither
    max_digits: int = 6  # numbers task: numbers have 1 … max_digits digits (the count uniform)
    embedding_size: int = 32  # source and target character embeddings
    attention: bool = True  # Bahdanau attention over the encoder's outputs
    attention_size: int = 32  # A, the attention's hidden width
    context: str = "init"  # how the summary C enters the decoder: init (h(0)), input (every step) or both
    bidirectional: bool = False  # read the source both ways (the summary is [h(S); g(1)])
    # ε_i, P(feed the true character): constant, linear, exponential or inverse-sigmoid
    teacher_schedule: str = "constant"
    teacher_param: float | None = None  # the schedule's ε, c or k (Bengio et al. 2015); None: a default per schedule
    beam_width: int = 4  # hypotheses kept by the beam search at evaluation
    hidden_size: int = 64  # units per recurrent layer (per direction in the encoder)
    batch_size: int = 64  # pairs per update
    lr: float = 3e-3  # learning rate
    max_steps: int | None = None  # updates; None: until max_time
    max_time: float | None = 300.0  # seconds of training
    eval_every: int = 250  # updates between validations (greedy and beam decoding of the val set)

    def check(self) -> None:
        super().check()
        for name in ("n_train", "n_val", "n_test", "embedding_size", "attention_size", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("val_data", "test_data"):
            if getattr(self, name) is not None and self.data is None:
                raise ValueError(f"{name} is given without data: give the training pairs as data (--data FILE)")
        if self.tokens not in ("chars", "words"):
            raise ValueError(f"tokens must be 'chars' or 'words', got {self.tokens!r}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be ≥ 1, got {self.min_count}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training pairs, got "
                f"{self.val_fraction + self.test_fraction}"
            )
        if not 1 <= self.max_digits <= MAX_DIGITS:
            raise ValueError(f"max_digits must be in [1, {MAX_DIGITS}], got {self.max_digits}")
        if self.context not in ("init", "input", "both"):
            raise ValueError(f"context must be 'init', 'input' or 'both', got {self.context!r}")
        if self.teacher_schedule not in SCHEDULES:
            raise ValueError(f"teacher_schedule must be one of {', '.join(SCHEDULES)}, got {self.teacher_schedule!r}")
        self.schedule()  # the schedule checks its parameter and names it

    def schedule(self):
        """ε_i as a function of the update i (:mod:`rnnkit.train.schedules`)."""
        param = DEFAULT_TEACHER_PARAM[self.teacher_schedule] if self.teacher_param is None else self.teacher_param
        return SCHEDULES[self.teacher_schedule](param)


class Pairs(NamedTuple):
    """A training batch, trimmed to its longest pair: sources (S, B), source_lengths (B,),
    targets (U + 1, B) with BOS first, target_lengths (B,) BOS and EOS included, and
    ``update``, the batch's number in the run (the i of ε_i)."""

    sources: Tensor
    source_lengths: Tensor
    targets: Tensor
    target_lengths: Tensor
    update: int


def take(split: Seq2SeqSplit, idx: Tensor, update: int = 0) -> Pairs:
    """The pairs ``idx`` of a split, without the padding columns none of them needs."""
    src_len, tgt_len = split.source_lengths[idx], split.target_lengths[idx]
    src = split.sources[: int(src_len.max()), idx]  # (S, B)
    tgt = split.targets[: int(tgt_len.max()), idx]  # (U + 1, B)
    return Pairs(src, src_len, tgt, tgt_len, update)


def teacher_forced_nll(model: Seq2Seq, pairs: Pairs, reduction: str = "mean") -> tuple[Tensor, int]:
    """The teacher-forced loss of a batch, and the number of target symbols it averages over.

    ``pairs.targets`` (U + 1, B) are framed BOS … EOS as :class:`~rnnkit.data.datasets.Seq2SeqSplit`
    holds them; the model is given ``targets[1:]`` (the decoder prepends BOS itself, see
    :meth:`rnnkit.Seq2Seq.forward`) and its logits are scored against them by
    :func:`rnnkit.sequence_nll` over each target's length (EOS included).

    Args:
        model: the encoder–decoder.
        pairs: a :class:`Pairs` batch (:func:`take` makes one from a split).
        reduction: ``"mean"`` (nats per target symbol, the training loss) or ``"sum"``.

    Returns:
        (loss, count): the NLL (a scalar tensor) and Σ target lengths without BOS.
    """
    y, lengths = pairs.targets[1:], pairs.target_lengths - 1  # (U, B): the decoder prepends BOS itself
    logits = model(pairs.sources, y, pairs.source_lengths, lengths).logits  # (U, B, V)
    return sequence_nll(logits, y, lengths, reduction), int(lengths.sum())


@torch.no_grad()
def translate(
    model: Seq2Seq,
    target_vocab: TokenVocab,
    sources: Tensor,
    source_lengths: Tensor,
    *,
    max_length: int,
    method: str = "greedy",
    beam_width: int = 4,
    **sampling,
) -> list[str]:
    """The translations of every source, decoded by :func:`rnnkit.generate` until EOS.

    Args:
        model: the encoder–decoder.
        target_vocab: turns the generated ids back into text (up to EOS).
        sources: (S, N) int64 source ids padded with PAD (``source_vocab.batch(texts)``); they
            may live on the CPU, each batch of ``EVAL_BATCH`` is moved to the model's device.
        source_lengths: (N,) int64.
        max_length: the most symbols a translation may have (EOS included).
        method: ``"greedy"`` (the default: deterministic), ``"beam"`` (``beam_width``
            hypotheses) or ``"sample"`` (with ``temperature``, ``top_k``, ``top_p``,
            ``generator`` in ``sampling``).

    Returns:
        N strings, in the order of the sources.
    """
    texts: list[str] = []
    device = model_device(model)
    for s in chunks(sources.shape[1], EVAL_BATCH):
        lengths = source_lengths[s]
        src, lengths = to_device((sources[: int(lengths.max()), s], lengths), device)  # (S, B), (B,)
        memory = model.encode(src, lengths)
        out = generate(
            model,
            lengths.numel(),
            max_length=max_length,
            method=method,
            beam_width=beam_width,
            end="eos",
            context=memory,
            **sampling,
        )
        texts += [target_vocab.decode(row[:n]) for row, n in zip(out.tokens, out.lengths.tolist())]
    return texts


class Seq2SeqTask(Task):
    """Numbers in digits → English words, or your own pairs (``cfg.data``), with an
    encoder–decoder (see the module docstring)."""

    name = "seq2seq"
    summary = (
        "numbers in digits → English words, or your own pairs (--data FILE of source<TAB>target lines), "
        "encoder–decoder ± attention (exact match, CER, chrF, BLEU; greedy vs beam)"
    )
    Config = Seq2SeqConfig
    metric = "exact_match"
    sample_hint = "--prime 1234 --method beam"  # what `rnnkit train` suggests after training
    higher_is_better = True

    def __init__(self, cfg: Seq2SeqConfig, vocabs: tuple[TokenVocab, TokenVocab] | None = None) -> None:
        super().__init__(cfg)
        self.source_vocab, self.target_vocab = vocabs or (None, None)
        if cfg.data is not None:  # any source text of the user's; the numbers' hint would not fit
            self.sample_hint = "--prime 'SOURCE TEXT' --method beam"

    def prepare(self, log) -> None:
        cfg = self.cfg
        self.schedule = cfg.schedule()
        if cfg.data is not None:
            return self._prepare_pairs(log)
        self.data = numbers_to_words(cfg.n_train, cfg.n_val, cfg.n_test, cfg.max_digits, seed=cfg.seed)
        self.source_vocab, self.target_vocab = self.data.source_vocab, self.data.target_vocab
        self.max_length = int(self.data.train.target_lengths.max()) - 1 + LENGTH_MARGIN  # BOS is not generated
        self.baselines = {}
        for s in ("val", "test"):
            split = getattr(self.data, s)
            spelled = [spell_digits(x) for x in split.source_texts]
            self.baselines[s] = {
                "exact_match": exact_match(spelled, split.target_texts),
                "bleu": bleu(spelled, split.target_texts),
            }
        self.baseline = self.baselines["val"]
        ex = self.data.train
        log(
            f"seq2seq: numbers of 1–{cfg.max_digits} digits → words; {cfg.n_train} / {cfg.n_val} / {cfg.n_test} pairs; "
            f"vocabularies {len(self.source_vocab)} → {len(self.target_vocab)}; e.g. {ex.source_texts[0]!r} → "
            f"{ex.target_texts[0]!r}"
        )
        log(
            "  baseline (each digit spelled alone): "
            + "; ".join(
                f"{s} exact match {b['exact_match']:.3f}, BLEU {b['bleu']:.1f}" for s, b in self.baselines.items()
            )
        )

    def _prepare_pairs(self, log, eval_data: str | None = None) -> None:
        """Your own pairs (``cfg.data``), or for ``rnnkit eval --data`` all pairs of ``eval_data``
        as both held-out splits, in the model's vocabularies."""
        cfg = self.cfg
        vocabs = None if self.source_vocab is None else (self.source_vocab, self.target_vocab)  # a checkpoint's
        if eval_data is None:
            self.data = load_pairs(
                cfg.data,
                val=cfg.val_data,
                test=cfg.test_data,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                min_count=cfg.min_count,
                split=cfg.tokens,
                vocabs=vocabs,
            )
        else:
            split = encode_pairs(read_pairs(eval_data), *vocabs)
            self.data = PairsData(*vocabs, split, split, split)
        self.source_vocab, self.target_vocab = self.data.source_vocab, self.data.target_vocab
        self.max_length = int(self.data.train.target_lengths.max()) - 1 + LENGTH_MARGIN  # BOS is not generated
        self.baselines = {}
        for s in ("val", "test"):  # copying the source: what a model must beat on cognates or transliteration
            split = getattr(self.data, s)
            copied, refs = split.source_texts, split.target_texts
            self.baselines[s] = {
                "exact_match": exact_match(copied, refs),
                "cer": char_error_rate(copied, refs),
                "chrf": chrf(copied, refs),
            }
        self.baseline = self.baselines["val"]
        d = self.data
        unk = sum(int((x.sources == UNK).sum()) for x in (d.val, d.test))
        log(
            f"seq2seq: pairs from {eval_data or cfg.data}; {len(d.train.source_texts)} / {len(d.val.source_texts)} / "
            f"{len(d.test.source_texts)} pairs; {cfg.tokens}, vocabularies {len(self.source_vocab)} → "
            f"{len(self.target_vocab)}"
            f"{f'; {unk} held-out source symbols unknown (UNK)' if unk else ''}; "
            f"e.g. {d.train.source_texts[0]!r} → {d.train.target_texts[0]!r}"
        )
        log(
            "  baseline (the source copied): "
            + "; ".join(
                f"{s} exact match {b['exact_match']:.3f}, CER {b['cer']:.3f}, chrF {b['chrf']:.1f}"
                for s, b in self.baselines.items()
            )
        )

    def prepare_eval(self, data: str | None, log) -> None:
        """For ``rnnkit eval``: the run's held-out pairs, or every pair of the file ``data`` (a
        run trained on ``--data`` only), in the model's vocabularies."""
        if data is None:
            return self.prepare(log)
        if self.cfg.data is None:
            raise ValueError(
                "rnnkit eval: this seq2seq run trained on the built-in numbers → words, which makes its own "
                "data; --data applies to runs trained on your own pairs (rnnkit train seq2seq --data FILE)"
            )
        self.schedule = self.cfg.schedule()
        self._prepare_pairs(log, eval_data=data)

    def build_model(self) -> Seq2Seq:
        cfg = self.cfg

        def cell(i: int, h: int):
            return make_cell(cfg.cell, i, h)

        E, H = cfg.embedding_size, cfg.hidden_size
        encoder = Encoder(
            Stack.build(cell, E, H, cfg.num_layers, bidirectional=cfg.bidirectional, dropout=cfg.dropout),
            vocab_size=len(self.source_vocab),
        )
        D = encoder.output_size
        width = E + (D if cfg.context in ("input", "both") else 0)
        if cfg.attention:  # the attention cell reads [x; c(t)] and must wrap a single cell
            decoder = cell(width + D, H)
        else:
            decoder = Stack.build(cell, width, H, cfg.num_layers, dropout=cfg.dropout)
        self.model = Seq2Seq(
            encoder,
            decoder,
            len(self.target_vocab),
            E,
            bos=BOS,
            eos=EOS,
            context=cfg.context,
            attention_size=cfg.attention_size if cfg.attention else None,
        )
        return self.model

    def describe(self, model) -> str:
        kind = "with attention" if self.cfg.attention else "without attention"
        return f"{super().describe(model)}; encoder–decoder {kind}"

    def batches(self) -> Minibatches:
        train = self.data.train
        return Minibatches(
            len(train.source_texts), self.cfg.batch_size, self.cfg.seed, lambda idx, i: take(train, idx, i)
        )

    def step(self, model: Seq2Seq, pairs: Pairs) -> StepResult:
        eps = self.schedule(pairs.update)  # the update count travels with the batch, so resume keeps it
        y, lengths = pairs.targets[1:], pairs.target_lengths - 1
        if eps >= 1:
            loss, n = teacher_forced_nll(model, pairs)
        else:  # scheduled sampling: a step-by-step rollout mixing true and own previous characters
            memory = model.encode(pairs.sources, pairs.source_lengths)
            loss = sequence_nll(rollout(model, y, eps, context=memory).logits, y, lengths, "mean")
            n = int(lengths.sum())
        return StepResult(loss, items=n, sequences=y.shape[1], metrics={"teacher_prob": eps})

    @torch.no_grad()
    def evaluate(self, model: Seq2Seq, split: str = "val") -> dict[str, float]:
        """Teacher-forced loss (nats/character), and exact match, character error rate (``cer``),
        chrF and BLEU of greedy and beam translations (``beam_`` in front) on ``split`` ("val" or
        "test"); ``baseline`` becomes that split's."""
        if split not in ("val", "test"):
            raise ValueError(f"seq2seq: split must be 'val' or 'test', got {split!r}")
        self.baseline = self.baselines[split]
        data: Seq2SeqSplit = getattr(self.data, split)
        total, count = 0.0, 0
        device = model_device(model)
        for s in chunks(len(data.source_texts), EVAL_BATCH):
            nll, n = teacher_forced_nll(model, to_device(take(data, torch.arange(s.start, s.stop)), device), "sum")
            total, count = total + float(nll), count + n
        out = {"loss": total / count}
        refs = data.target_texts
        for method, prefix in (("greedy", ""), ("beam", "beam_")):
            hyps = translate(
                model,
                self.target_vocab,
                data.sources,
                data.source_lengths,
                max_length=self.max_length,
                method=method,
                beam_width=self.cfg.beam_width,
            )
            out[f"{prefix}exact_match"] = exact_match(hyps, refs)
            out[f"{prefix}cer"] = char_error_rate(hyps, refs)
            out[f"{prefix}chrf"] = chrf(hyps, refs)
            try:
                out[f"{prefix}bleu"] = bleu(hyps, refs)
            except ImportError:
                if self.cfg.data is None:
                    raise  # the numbers task reports BLEU; your own pairs do without it (sacrebleu not installed)
        return out

    def sample_text(
        self,
        model: Seq2Seq,
        prime: str = "1234",
        length: int = 200,
        method: str = "greedy",
        beam_width: int = 4,
        n_best: int = 1,
        **sampling,
    ) -> str:
        """The translation of ``prime`` (a number in digits; blank: 1234), up to ``length``
        characters: ``"1234 → one thousand two hundred thirty-four"``; with ``n_best`` > 1 (beam
        search) the n best translations, one a line, each with its score (log p / L^α)."""
        if self.cfg.data is not None:  # your own pairs: any source text, unseen symbols as UNK
            number = prime.strip()
            if not number:
                raise DataError("seq2seq: give the source text to translate with --prime TEXT")
        else:
            number = prime.strip() or "1234"
            if not set(number) <= set("0123456789"):
                raise DataError(f"seq2seq: the prime must be a number written in digits, got {number!r}")
        src = torch.tensor(self.source_vocab.encode(number)).view(-1, 1)  # (S, 1)
        if n_best > 1:
            src, lengths = to_device((src, torch.tensor([src.shape[0]])), model_device(model))
            best = generate(
                model,
                max_length=length,
                method=method,
                beam_width=beam_width,
                n_best=n_best,
                end="eos",
                context=model.encode(src, lengths),
            )
            return "\n".join(
                f"{number} → {self.target_vocab.decode(row[:n])}  ({score:.3f})"
                for row, n, score in zip(best.tokens[0], best.lengths[0].tolist(), best.scores[0].tolist())
                if n > 0
            )
        text = translate(
            model,
            self.target_vocab,
            src,
            torch.tensor([src.shape[0]]),
            max_length=length,
            method=method,
            beam_width=beam_width,
            **sampling,
        )[0]
        return f"{number} → {text}"

    def final_sample(self, result: dict) -> str:
        """A few test numbers translated by the trained model (greedy), shown after training."""
        test = self.data.test
        lines = []
        for k in range(5):
            got = self.sample_text(self.model, test.source_texts[k])
            mark = "✓" if got.split(" → ", 1)[1] == test.target_texts[k] else f"✗ (expected {test.target_texts[k]})"
            lines.append(f"{got}  {mark}")
        return "\n".join(lines)

    def meta(self) -> dict:
        return {
            **super().meta(),
            "source_vocab": self.source_vocab.to_dict(),
            "target_vocab": self.target_vocab.to_dict(),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> Seq2SeqTask:
        task = super().from_meta(meta)
        task.source_vocab, task.target_vocab = (
            TokenVocab.from_dict(meta["source_vocab"]),
            TokenVocab.from_dict(meta["target_vocab"]),
        )
        return task


__all__ = ["Seq2SeqConfig", "Seq2SeqTask", "Pairs", "take", "teacher_forced_nll", "translate"]
