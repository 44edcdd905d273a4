"""The char-LM task: baseline, evaluation, the decoding protocol, seeded sampling, the data split."""

import math

import pytest
import torch

from rnnkit.data.corpus import CharVocab, DataError
from rnnkit.tasks.charlm import CharLM, CharLMConfig, CharLMTask, evaluate_stream, sample, unigram_bpc
from rnnkit.train import LaneStream


def test_unigram_baseline_is_the_entropy_of_the_character_frequencies():
    train = torch.tensor([0, 0, 0, 1] * 1000)
    val = torch.tensor([0, 0, 0, 1] * 10)
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert abs(unigram_bpc(train, val, 2) - expected) < 1e-3


def tiny_model(vocab_size=8, cell="lstm"):
    torch.manual_seed(0)
    return CharLM(vocab_size, CharLMConfig(cell=cell, hidden_size=16, num_layers=2, embedding_size=8))


def test_untrained_model_bpc_is_near_log2_vocab_and_sampling_is_seeded():
    vocab = CharVocab.from_text("abcdefgh")
    model = tiny_model()
    docs = [torch.randint(0, 8, (n,)) for n in (700, 500, 900)]
    metrics = evaluate_stream(model.eval(), LaneStream(docs, 2, 25))
    assert abs(metrics["bpc"] - 3.0) < 0.2
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["perplexity"] == pytest.approx(2 ** metrics["bpc"])
    a = sample(model, vocab, 40, prime="ab", generator=torch.Generator().manual_seed(1))
    b = sample(model, vocab, 40, prime="ab", generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 40 and set(a) <= set("abcdefgh")


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman", "peephole", "layernorm-lstm"])
def test_stepping_equals_the_forward_pass(cell):
    # step() runs each layer's cell (torch's fused cell op where one computes it), forward() the
    # stack's sequence path: the same logits and states, also when stepping on from forward's state
    model = tiny_model(cell=cell).eval()
    tokens = torch.randint(0, 8, (9, 3))
    logits, final = model(tokens)
    state = model.start(3)
    for t in range(9):
        out, state = model.step(tokens[t], state)
        torch.testing.assert_close(out.logits, logits[t], rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(state, final):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    more = torch.randint(0, 8, (3,))
    out, _ = model.step(more, tuple(tuple(s) for s in final))  # plain tuples, as a checkpoint gives them
    expected, _ = model(torch.cat([tokens, more.view(1, 3)]))
    torch.testing.assert_close(out.logits, expected[-1], rtol=1e-5, atol=1e-6)


def test_every_nth_file_is_held_out_whole_alternately_for_validation_and_test(tmp_path):
    for k in range(9):
        (tmp_path / f"m{k}.py").write_text(f"x{k} = {k}\n" * 50)
    task = CharLMTask(CharLMConfig(data=str(tmp_path), holdout_every=3, seq_length=10, batch_size=2))
    task.prepare(lambda s: None)
    val = {tuple(d.tolist()) for d in task.streams["val"].documents}
    test = {tuple(d.tolist()) for d in task.streams["test"].documents}
    trained = {tuple(d.tolist()) for d in task.train_stream.documents}
    for k in range(9):
        doc = tuple(task.vocab.encode(f"x{k} = {k}\n" * 50).tolist())
        assert (doc in val, doc in test, doc in trained) == (k in (2, 8), k == 5, k % 3 != 2), k


def test_a_test_split_leaves_the_training_text_as_it_was(tmp_path):
    """The held-out files alternate between validation and test: training reads the same files."""
    for k in range(6):
        (tmp_path / f"m{k}.py").write_text(f"y{k} = {k}\n" * 40)
    task = CharLMTask(CharLMConfig(data=str(tmp_path), holdout_every=3, seq_length=10, batch_size=2))
    task.prepare(lambda s: None)
    trained = sorted(tuple(d.tolist()) for d in task.train_stream.documents)
    expect = sorted(tuple(task.vocab.encode(f"y{k} = {k}\n" * 40).tolist()) for k in (0, 1, 3, 4))
    assert trained == expect and set(task.streams) == {"val", "test"}
    model = task.build_model().eval()
    val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
    assert val["bpc"] != test["bpc"]  # two different files, each its own measurement
    assert task.baseline == task.baselines["test"]


def test_without_enough_files_there_is_no_test_split_and_asking_says_so(tmp_path):
    (tmp_path / "one.txt").write_text("abc def\n" * 100)
    task = CharLMTask(
        CharLMConfig(
            data=str(tmp_path / "one.txt"), seq_length=10, batch_size=2, hidden_size=8, num_layers=1, embedding_size=4
        )
    )
    task.prepare(lambda s: None)
    with pytest.raises(ValueError, match="this run has no test split.*use --split val"):
        task.evaluate(task.build_model(), "test")


def test_lstm_forget_gates_start_at_torchs_init_by_default_or_at_the_bias_asked_for():
    H = 16
    bound = 1 / math.sqrt(H)
    model = tiny_model()  # forget_bias None: every parameter of the LSTM drawn as torch.nn.LSTM draws it
    for layer in model.rnn.layers:
        cell = layer.cell
        for p in cell.parameters():
            assert p.abs().max() <= bound and p.std() > bound / 3  # U(−1/√H, 1/√H), no constant rows
        f = cell.gate_slices["f"]
        forget = cell.bias_ih[f] + cell.bias_hh[f]
        assert forget.abs().max() <= 2 * bound and forget.std() > bound / 3
    ref = torch.nn.LSTM(8, H, 2)  # the same distribution: its biases span the same range
    assert ref.bias_ih_l0.abs().max() <= bound
    for cell_name, value in (("lstm", 1.0), ("cifg", 2.0), ("gru", -1.0)):
        torch.manual_seed(0)
        cfg = CharLMConfig(cell=cell_name, hidden_size=H, num_layers=2, embedding_size=8, forget_bias=value)
        for layer in CharLM(8, cfg).rnn.layers:
            cell = layer.cell
            rows = (
                slice(0, H) if cell_name == "cifg" else dict(cell.structure.gates)["z" if cell_name == "gru" else "f"]
            )
            torch.testing.assert_close(cell.bias_ih[rows] + cell.bias_hh[rows], torch.full((H,), value))
    torch.manual_seed(0)
    cifg = CharLM(8, CharLMConfig(cell="cifg", hidden_size=H, num_layers=1, embedding_size=8))
    f = cifg.rnn.layers[0].cell.bias_ih[:H] + cifg.rnn.layers[0].cell.bias_hh[:H]  # CIFG's gates: f, g, o
    assert f.abs().max() <= 2 * bound
    from rnnkit.tasks.config import check_config

    assert check_config(CharLMConfig, {"forget_bias": 1.0}, source="run.toml").forget_bias == 1.0
    assert CharLMConfig().forget_bias is None


def test_the_old_name_val_every_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="val_every is now holdout_every"):
        cfg = CharLMConfig(val_every=5)
    assert cfg.holdout_every == 5
    from rnnkit.tasks.config import check_config

    with pytest.warns(DeprecationWarning, match="'val_every' is now 'holdout_every'"):
        assert check_config(CharLMConfig, {"val_every": 4}, source="run.toml").holdout_every == 4


def test_prime_outside_the_vocabulary_is_refused():
    task = CharLMTask(CharLMConfig(), vocab=CharVocab.from_text("abc"))
    with pytest.raises(DataError, match="the prime text has 1 character"):
        task.sample_text(tiny_model(3), prime="abz", length=3)


def test_a_corpus_shorter_than_one_chunk_trains_on_shorter_chunks(tmp_path):
    (tmp_path / "short.txt").write_text("def f(x):\n    return x\n")  # 23 characters, chunks of 100
    task = CharLMTask(
        CharLMConfig(
            data=str(tmp_path / "short.txt"),
            seq_length=100,
            batch_size=4,
            hidden_size=8,
            num_layers=1,
            embedding_size=4,
        )
    )
    task.prepare(lambda s: None)
    chunks = list(task.train_stream)
    # 23 − 2 held out, − 1 for the target = 20 steps, cut into 4 lanes of 5
    assert len(chunks) == 1 and chunks[0].inputs.shape == (5, 4)
    model = task.build_model()
    result = task.step(model, chunks[0])
    assert result.items == 20 and torch.isfinite(result.loss)
    assert math.isfinite(task.evaluate(model)["bpc"])


def test_a_folder_with_empty_files_trains_on_the_others(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")  # a package's empty __init__.py is no reason to fail
    for k in range(3):
        (tmp_path / "pkg" / f"m{k}.py").write_text(f"x{k} = {k}\n" * 20)
    task = CharLMTask(CharLMConfig(data=str(tmp_path), holdout_every=3, seq_length=10, batch_size=2))
    task.prepare(lambda s: None)
    assert len(task.train_stream.documents) == 2 and len(task.val_stream.documents) == 1


@pytest.mark.parametrize("split_documents", [True, False])
def test_chunks_run_whole_without_lengths_as_the_exact_per_lane_run_does(split_documents):
    """Every chunk runs whole (no lengths, torch's fused kernels) although lanes end inside
    chunks where their documents end: the losses, gradients and carried states of truncated
    BPTT over a stream equal those of the run given each lane's length, in float64."""
    from rnnkit.tasks.charlm import TBPTTStep, masked_nll

    torch.manual_seed(0)
    model = CharLM(9, CharLMConfig(embedding_size=5, hidden_size=6, num_layers=2)).double()
    docs = [torch.randint(0, 9, (n,)) for n in (23, 7, 41, 12, 30, 5, 18)]
    stream = LaneStream(docs, 3, 6, split_documents=split_documents)
    assert any(bool((c.lengths < c.inputs.shape[0]).any()) for c in stream)  # lanes do end inside chunks

    def run(with_lengths):
        step, losses, grads = TBPTTStep(), [], []
        for chunk in stream:
            model.zero_grad()
            if with_lengths:  # the exact per-lane run: the final state taken at each lane's length
                state = LaneStream.carry(step.state, step.previous, chunk)
                logits, step.state = model(chunk.inputs, state, chunk.lengths)
                total, n = masked_nll(logits, chunk.targets, chunk.lengths)
                step.previous, loss = chunk, total / n
            else:
                loss = step(model, chunk).loss
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append([p.grad.clone() for p in model.parameters()])
        return losses, grads

    (want, want_grads), (got, got_grads) = run(True), run(False)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    for a, b in zip(got_grads, want_grads):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
