"""The tagging task: end to end through the CLI on a folder of Python files, per-character
accuracy and the unigram baseline against direct counts, what each direction may read, the
tagged sample, and (slow) that it learns the stdlib's token kinds."""

import random
from collections import Counter, defaultdict

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.corpus import CharVocab, DataError
from rnnkit.data.datasets import Split
from rnnkit.models import sequence_nll
from rnnkit.tasks.tagging import TaggingConfig, TaggingTask, evaluate_split
from tests.helpers import last_json, randomize_


def python_source(rng: random.Random, n_defs: int) -> str:
    """Tokenizable Python with every tag: names, keywords, numbers, strings, comments, blank lines."""
    lines = []
    for k in range(n_defs):
        a, b = rng.choice(["x", "count", "total", "items"]), rng.randint(0, 999)
        lines += [
            f"def f{k}({a}, y={b}):",
            f"    # step {k}",
            f"    if {a} > {rng.random():.3f}:",
            f"        return {a} * y + {b}",
            f"    return '{rng.choice(['ab', 'c d', 'e'])}'",
            "",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("py")
    rng = random.Random(0)
    for k in range(10):
        (root / f"m{k}.py").write_text(python_source(rng, 12))
    (root / "z_broken.py").write_text("s = 'never closed\n")  # tokenize refuses it: skipped
    return root


@pytest.fixture(scope="module")
def task(folder):
    t = TaggingTask(TaggingConfig(data=str(folder), every=5, chunk_length=40, hidden_size=6, embedding_size=5))
    t.prepare(lambda s: None)
    return t


def test_trains_through_the_cli_then_eval_and_the_tagged_sample(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "tagging",
                "--data",
                str(folder),
                "--every",
                "5",
                "--chunk-length",
                "40",
                "--hidden-size",
                "6",
                "--embedding-size",
                "5",
                "--batch-size",
                "8",
                "--max-steps",
                "3",
                "--eval-every",
                "3",
                "--out",
                str(out),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "1 skipped" in text
    result = last_json(text)
    assert result["task"] == "tagging" and result["steps"] == 3 and result["items_seen"] == 3 * 8 * 40
    assert 0 <= result["accuracy"] <= 1 and 0 < result["baseline"] <= 1
    assert main(["eval", str(out / "latest.safetensors"), "--json"]) == 0
    assert last_json(capsys.readouterr().out)["val_accuracy"] == pytest.approx(result["accuracy"], abs=1e-12)
    assert main(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"]) == 0
    assert 0 <= last_json(capsys.readouterr().out)["test_accuracy"] <= 1
    assert main(["sample", str(out), "--prime", "if x:  # step\n    y = 1\n"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "if x:  # step" and len(shown[1]) == len(shown[0]) and set(shown[1]) <= set("_$nkods#")
    assert "kk_n" in "".join(shown)  # tokenize's tags: keyword, keyword, space, name …


def test_accuracy_and_loss_equal_a_per_character_count(task):
    torch.manual_seed(0)
    model = randomize_(task.build_model(), scale=0.5).eval()
    split = Split(task.data.val.inputs[:, :6], task.data.val.targets[:, :6])
    got = evaluate_split(model, split)
    right, nll, n = 0, 0.0, 0
    with torch.no_grad():
        for b in range(split.inputs.shape[1]):  # one chunk at a time, one character at a time
            logits = model(split.inputs[:, b : b + 1])[:, 0]  # (T, K)
            for t in range(split.inputs.shape[0]):
                y = int(split.targets[t, b])
                row = logits[t].tolist()
                right += int(row.index(max(row)) == y)
                nll -= float(torch.log_softmax(logits[t].double(), -1)[y])
                n += 1
    assert got["accuracy"] == pytest.approx(right / n, abs=1e-12)
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)


def test_baseline_tags_each_character_with_its_most_common_training_tag(task):
    seen = defaultdict(Counter)
    train = task.data.train
    for ch, tag in zip(train.inputs.flatten().tolist(), train.targets.flatten().tolist()):
        seen[ch][tag] += 1
    overall = Counter(train.targets.flatten().tolist())
    fallback = min(t for t, c in overall.items() if c == max(overall.values()))

    def best(ch):  # the most common tag (ties: the smaller index), or the overall majority if unseen
        if ch not in seen:
            return fallback
        top = max(seen[ch].values())
        return min(t for t, c in seen[ch].items() if c == top)

    for s in ("val", "test"):
        split = getattr(task.data, s)
        pairs = list(zip(split.inputs.flatten().tolist(), split.targets.flatten().tolist()))
        expected = sum(best(ch) == tag for ch, tag in pairs) / len(pairs)
        assert task.baselines[s]["accuracy"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_forward_tagger_reads_only_the_past_and_a_bidirectional_one_the_whole_chunk(folder, bidirectional):
    t = TaggingTask(
        TaggingConfig(
            data=str(folder), every=5, chunk_length=40, hidden_size=6, embedding_size=5, bidirectional=bidirectional
        )
    )
    t.prepare(lambda s: None)
    model = randomize_(t.build_model(), scale=0.5).eval()
    x = t.data.val.inputs[:, :2]
    changed = x.clone()
    changed[30:] = (changed[30:] + 1) % len(t.vocab)  # rewrite the future after step 29
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[:30], b[:30]) != bidirectional
    assert not torch.allclose(a[30:], b[30:])


def test_training_step_loss_is_the_mean_nll_per_character(task):
    model = randomize_(task.build_model(), scale=0.5)
    x, y = next(iter(task.batches()))
    result = task.step(model, (x, y))
    torch.testing.assert_close(
        result.loss, sequence_nll(model(x), y, reduction="sum") / y.numel(), rtol=1e-6, atol=1e-7
    )
    assert result.items == y.numel() and result.sequences == y.shape[1]


def test_unknown_characters_and_a_changed_corpus_are_refused(task, folder):
    model = task.build_model()
    with pytest.raises(DataError, match="these are not in its vocabulary: 'λ'"):
        task.sample_text(model, prime="λ = 1\n")
    stale = TaggingTask(task.cfg, vocab=CharVocab("abc"))
    with pytest.raises(DataError, match="the data's characters differ from the checkpoint's vocabulary"):
        stale.prepare(lambda s: None)


@pytest.mark.slow
def test_a_bidirectional_lstm_tags_stdlib_source_far_better_than_unigram_tags(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "tagging",
                "--max-steps",
                "500",
                "--eval-every",
                "250",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    result = last_json(capsys.readouterr().out)
    assert result["accuracy"] > 0.95 and result["baseline"] < 0.7
