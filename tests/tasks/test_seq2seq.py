"""The seq2seq task: end to end through the CLI (train, eval, sample), the evaluation pipeline
against an oracle whose answers are known, the teacher-forced pass against step-by-step decoding,
the scheduled-sampling curriculum across a resume, and (slow) that it learns to translate."""

import json
import random
import shutil

import pytest
import sacrebleu
import torch
from torch import nn

from rnnkit.checkpoint import read_meta
from rnnkit.cli import main
from rnnkit.data.corpus import DataError
from rnnkit.data.datasets import BOS, EOS, PAD, pad_batch
from rnnkit.generate import generate
from rnnkit.models import StepOutput, sequence_nll
from rnnkit.tasks import load_run
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, take, translate
from rnnkit.train import rollout
from tests.helpers import randomize_

# A tiny model, quiet, its summary as JSON: for the built-in numbers and for a pairs file alike.
TINY_MODEL = ["--hidden-size", "8", "--embedding-size", "8", "--attention-size", "8", "--batch-size", "16"]
TINY_MODEL += ["--no-progress", "--json"]
SMALL = ["--n-train", "64", "--n-val", "8", "--n-test", "8", "--max-digits", "3", *TINY_MODEL]


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def small_config(**kw):
    return Seq2SeqConfig(
        n_train=64, n_val=12, n_test=12, max_digits=3, hidden_size=8, embedding_size=8, attention_size=8, **kw
    )


def test_trains_through_the_cli_then_eval_sample_and_resume_with_the_curriculum_on_track(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "seq2seq",
        "--out",
        str(out),
        "--teacher-schedule",
        "linear",
        "--teacher-param",
        "0.3",
        "--eval-every",
        "3",
        *SMALL,
    ]
    assert main([*args, "--max-steps", "3"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["task"] == "seq2seq" and result["metric"] == "exact_match" and result["steps"] == 3
    for key in ("exact_match", "val_bleu", "val_beam_exact_match", "val_beam_bleu"):
        assert key in result
    assert main(["eval", str(out / "latest.safetensors"), "--json"]) == 0
    val = last_json(capsys.readouterr().out)
    assert val["val_exact_match"] == result["exact_match"] and val["val_bleu"] == pytest.approx(result["val_bleu"])
    assert main(["sample", str(out), "--prime", "1234", "--method", "beam", "--length", "30"]) == 0
    assert capsys.readouterr().out.startswith("1234 → ")
    # ε_i = max(0, 1 − 0.3 i) at update i, also for the updates after a resume
    assert main([*args, "--max-steps", "5", "--resume"]) == 0
    capsys.readouterr()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probs = [r["teacher_prob"] for r in logged if r["kind"] == "train"]
    assert probs == pytest.approx([max(0.0, 1 - 0.3 * i) for i in range(5)])


def test_sample_lists_the_n_best_translations_of_beam_search_with_their_scores(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "seq2seq", "--out", str(out), "--max-steps", "2", *SMALL]) == 0
    capsys.readouterr()
    args = ["sample", str(out), "--prime", "305", "--method", "beam", "--beam-width", "4", "--length", "12"]
    assert main([*args, "--n-best", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("305 → ") for line in lines)
    scores = [float(line.rsplit("(", 1)[1].rstrip(")")) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert main(args) == 0  # the single answer is the list's first
    assert capsys.readouterr().out.strip() == lines[0].rsplit("  (", 1)[0].rstrip()


class Oracle(nn.Module):
    """A model that knows an answer for every source: teacher forcing and stepping both emit it
    (one-hot logits), so every metric of the evaluation is known in advance."""

    bos, eos = BOS, EOS

    def __init__(self, task, answers):
        super().__init__()
        self.task, self.answers = task, answers
        self.anchor = nn.Parameter(torch.zeros(1))  # generate reads the device from the parameters

    def encode(self, src, lengths):
        texts = [self.task.source_vocab.decode(src[: int(n), b]) for b, n in enumerate(lengths)]
        ids, _ = pad_batch([self.task.target_vocab.encode(self.answers[t], eos=True) for t in texts])
        return ids.t()  # (B, U)

    def _logits(self, ids):
        return 10.0 * nn.functional.one_hot(ids, len(self.task.target_vocab)).float()

    def forward(self, src, tgt, src_lengths, tgt_lengths):
        ids = self.encode(src, src_lengths)  # (B, U)
        T = tgt.shape[0]
        ids = torch.cat([ids, torch.full((ids.shape[0], T), PAD)], 1)[:, :T]
        return StepOutput(self._logits(ids.t()))  # (T, B, V)

    def start(self, batch_size=None, context=None):
        return context, torch.zeros(context.shape[0], dtype=torch.long)

    def step(self, y_prev, state):
        ids, t = state
        now = ids[torch.arange(ids.shape[0]), t.clamp(max=ids.shape[1] - 1)]
        return StepOutput(self._logits(now)), (ids, t + 1)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_scores_the_decoded_translations_by_exact_match_cer_chrf_and_sacrebleu(split):
    task = Seq2SeqTask(small_config())
    task.prepare(lambda s: None)
    data = getattr(task.data, split)
    answers, hyps = {}, []
    for k, (src, ref) in enumerate(zip(data.source_texts, data.target_texts)):
        answers[src] = ref if k % 3 else ref + " one"  # every third answer is wrong
        hyps.append(answers[src])
    got = task.evaluate(Oracle(task, answers), split)
    right = sum(h == r for h, r in zip(hyps, data.target_texts))
    assert 0 < right < len(hyps)
    expected_bleu = sacrebleu.corpus_bleu(hyps, [data.target_texts]).score
    for prefix in ("", "beam_"):  # one-hot logits: beam search finds the greedy answer too
        assert got[f"{prefix}exact_match"] == pytest.approx(right / len(hyps), abs=1e-12)
        assert got[f"{prefix}bleu"] == pytest.approx(expected_bleu, rel=1e-9)
        # every third answer has " one" (4 characters) too many: 4 edits each, over all reference characters
        wrong = len(hyps) - right
        assert got[f"{prefix}cer"] == pytest.approx(4 * wrong / sum(map(len, data.target_texts)), rel=1e-12)
        assert got[f"{prefix}chrf"] == pytest.approx(
            sacrebleu.metrics.CHRF().corpus_score(hyps, [data.target_texts]).score, rel=1e-9
        )
    spelled = [
        " ".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][int(c)] for c in s)
        for s in data.source_texts
    ]
    assert task.baseline["bleu"] == pytest.approx(sacrebleu.corpus_bleu(spelled, [data.target_texts]).score, rel=1e-9)
    assert task.baseline["exact_match"] == sum(s == r for s, r in zip(spelled, data.target_texts)) / len(spelled)


@pytest.mark.parametrize("attention", [True, False])
def test_the_teacher_forced_loss_equals_stepping_the_decoder_on_the_true_characters(attention):
    task = Seq2SeqTask(small_config(attention=attention, context="both"))
    task.prepare(lambda s: None)
    model = randomize_(task.build_model(), scale=0.3)
    pairs = take(task.data.train, torch.arange(10), update=0)
    loss = task.step(model, pairs).loss
    y, lengths = pairs.targets[1:], pairs.target_lengths - 1
    stepped = rollout(model, y, 1.0, context=model.encode(pairs.sources, pairs.source_lengths)).logits
    torch.testing.assert_close(loss, sequence_nll(stepped, y, lengths, "mean"), rtol=1e-5, atol=1e-6)


def test_config_and_prime_errors_name_what_was_wrong():
    with pytest.raises(
        ValueError, match="teacher_schedule must be one of constant, linear, exponential, inverse-sigmoid, got 'cosine'"
    ):
        Seq2SeqConfig(teacher_schedule="cosine").check()
    with pytest.raises(ValueError, match=r"Exponential: k must be a number in \(0, 1\), got 1.5"):
        Seq2SeqConfig(teacher_schedule="exponential", teacher_param=1.5).check()
    task = Seq2SeqTask(small_config())
    task.prepare(lambda s: None)
    with pytest.raises(DataError, match="the prime must be a number written in digits, got '12a'"):
        task.sample_text(task.build_model(), "12a")


@pytest.mark.slow
def test_attention_model_learns_to_write_numbers_in_words(tmp_path, capsys):
    """600 updates of the default model, seeds 0–2. Measured (torch 2.13, CPU): exact match 0.29,
    0.97, 0.97 — seed 0 sits on a plateau at 600 updates on the reference loop and the fused engine
    alike (the hand-written engine's rounding happened to leave it earlier, 0.87), so one seed is
    a coin toss and the test asks two of three to learn."""
    learned = []
    for seed in range(3):
        assert (
            main(
                [
                    "train",
                    "seq2seq",
                    "--out",
                    str(tmp_path / f"r{seed}"),
                    "--seed",
                    str(seed),
                    "--max-time",
                    "none",
                    "--max-steps",
                    "600",
                    "--eval-every",
                    "300",
                    "--no-progress",
                    "--json",
                ]
            )
            == 0
        )
        result = last_json(capsys.readouterr().out)
        assert result["baseline"] < 0.05
        learned.append(result["exact_match"] > 0.5 and result["val_bleu"] > 80)
    assert sum(learned) >= 2, learned


def write_pairs(path, n, seed, alphabet="abcdefghij"):
    """n distinct words and their reversals, one source<TAB>target pair a line."""
    gen = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add("".join(gen.choice(alphabet) for _ in range(gen.randrange(2, 7))))
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in sorted(words)), encoding="utf-8")
    return path


def test_trains_on_your_own_pairs_file_then_decodes_and_evaluates_from_the_checkpoint_alone(tmp_path, capsys):
    pairs, out = write_pairs(tmp_path / "pairs.tsv", 240, seed=0), tmp_path / "run"
    args = [
        "train",
        "seq2seq",
        "--data",
        str(pairs),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        *TINY_MODEL,
    ]
    assert main(args) == 0
    shown = capsys.readouterr().out
    result = last_json(shown)
    assert result["steps"] == 4 and result["metric"] == "exact_match"
    assert {"val_cer", "val_chrf", "val_beam_cer", "val_beam_chrf", "val_bleu"} <= set(result)
    assert "baseline (the source copied)" in shown and "--prime 'SOURCE TEXT'" in shown
    meta = read_meta(out / "latest.safetensors")
    assert meta["source_vocab"]["unk"] and set(meta["source_vocab"]["symbols"]) <= set("abcdefghij")
    shutil.move(pairs, tmp_path / "moved.tsv")  # decoding needs the checkpoint alone
    # no --method: a translator decodes greedily, so the answer repeats and equals translate()
    assert main(["sample", str(out), "--prime", "abcde", "--length", "12"]) == 0
    default = capsys.readouterr().out
    assert main(["sample", str(out), "--prime", "abcde", "--length", "12", "--method", "greedy", "--seed", "9"]) == 0
    assert capsys.readouterr().out == default
    task, model, _ = load_run(out)
    assert (
        default.strip()
        == "abcde → " + translate(model, task.target_vocab, *task.source_vocab.batch(["abcde"]), max_length=12)[0]
    )
    assert main(["sample", str(out), "--prime", "xyz", "--length", "5"]) == 0  # unseen characters: UNK, not an error
    assert capsys.readouterr().out.startswith("xyz → ")
    other = write_pairs(tmp_path / "other.tsv", 30, seed=5)
    assert main(["eval", str(out / "latest.safetensors"), "--data", str(other), "--json"]) == 0
    evaluated = last_json(capsys.readouterr().out)
    assert 0 <= evaluated["val_cer"] and 0 <= evaluated["val_chrf"] <= 100
    # a bad line stops training before anything is written, and says where
    bad = tmp_path / "bad.tsv"
    bad.write_text("ab\tba\ncd dc\n", encoding="utf-8")
    assert main(["train", "seq2seq", "--data", str(bad), "--out", str(tmp_path / "bad-run"), "--max-steps", "1"]) == 2
    assert "bad.tsv:2: expected source<TAB>target, got no tab" in capsys.readouterr().err
    assert main(["train", "seq2seq", "--val-data", str(other), "--out", str(tmp_path / "r2"), "--max-steps", "1"]) == 2
    assert "val_data is given without data" in capsys.readouterr().err


def test_the_built_in_task_without_method_decodes_greedily_in_python_too():
    task = Seq2SeqTask(small_config())
    task.prepare(lambda s: None)
    model = randomize_(task.build_model(), scale=0.5)
    split = task.data.val
    greedy = translate(model, task.target_vocab, split.sources, split.source_lengths, max_length=20)
    memory = model.encode(split.sources, split.source_lengths)
    out = generate(model, max_length=20, context=memory)  # no method: the translator's default, greedy
    assert greedy == [task.target_vocab.decode(row[:n]) for row, n in zip(out.tokens, out.lengths.tolist())]
