"""Padding and collate against batches built by hand: ragged NumPy and torch input of several
feature shapes, per-sequence and per-step targets, a DataLoader end to end, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rnnkit import ManyToOne, Stack
from rnnkit.cells import GRUCell
from rnnkit.data import PaddedBatch, SequenceCollate, SequenceDataset, collate_sequences, pad_sequences


def ragged(lengths, features, seed=0, kind="numpy"):
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(n, *features)) for n in lengths]
    return arrays if kind == "numpy" else [torch.from_numpy(a).float() for a in arrays]


def by_hand(arrays, pad=0.0):
    """(T, B, F…): sequence b's steps in column b, ``pad`` after them — one element at a time."""
    T, B = max(len(a) for a in arrays), len(arrays)
    features = np.asarray(arrays[0]).shape[1:]
    out = np.full((T, B, *features), pad, dtype=np.float64)
    for b, a in enumerate(arrays):
        for t in range(len(a)):
            out[t, b] = np.asarray(a[t], dtype=np.float64)
    return torch.from_numpy(out)


@pytest.mark.parametrize("features", [(), (3,), (2, 4)], ids=["scalar", "vector", "matrix"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_pad_sequences_matches_a_hand_built_batch(features, kind):
    lengths = [4, 7, 1, 5]  # not sorted
    arrays = ragged(lengths, features, seed=len(features), kind=kind)
    x, n = pad_sequences(arrays, padding_value=-1.5)
    assert x.shape == (7, 4, *features) and x.dtype == torch.float32 and n.dtype == torch.long
    assert n.tolist() == lengths
    torch.testing.assert_close(x, by_hand(arrays, pad=-1.5).float(), rtol=0, atol=0)
    xb, nb = pad_sequences(arrays, batch_first=True, padding_value=-1.5)
    assert xb.shape == (4, 7, *features)
    torch.testing.assert_close(xb, x.transpose(0, 1), rtol=0, atol=0)
    assert nb.tolist() == lengths


def test_integers_stay_integers_and_dtype_is_honoured():
    ids = [np.array([3, 1, 4]), np.array([1, 5]), np.array([9, 2, 6, 5])]
    x, n = pad_sequences(ids, padding_value=0)
    assert x.dtype == torch.long and x.shape == (4, 3)
    assert x[:, 2].tolist() == [9, 2, 6, 5] and x[:, 1].tolist() == [1, 5, 0, 0] and n.tolist() == [3, 2, 4]
    x64, _ = pad_sequences(ragged([2, 3], (2,)), dtype=torch.float64)
    assert x64.dtype == torch.float64
    mixed, _ = pad_sequences([np.array([1, 2]), np.array([0.5])])  # an int and a float sequence: floats
    assert mixed.dtype == torch.float32 and mixed[:, 1].tolist() == [0.5, 0.0]


def test_nested_lists_are_read_as_arrays():
    x, n = pad_sequences([[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]]])
    assert n.tolist() == [1, 2] and x[:, 1].tolist() == [[3.0, 4.0], [5.0, 6.0]] and x[1, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([], ValueError, "sequences is empty"),
        (
            [np.zeros((3, 2)), np.zeros((4, 3))],
            ValueError,
            r"sequence 1 has feature shape \(3,\).*expected \(2,\) like sequence 0",
        ),
        ([np.zeros((3, 2)), "hello"], TypeError, "sequence 1 must be a NumPy array or a tensor, got str"),
        (
            [np.zeros((3, 2)), np.array(["a", "b"])],
            TypeError,
            "sequence 1 must hold numbers, got an array of dtype <U1",
        ),
        ([np.zeros((3, 2)), {"x": 1}], TypeError, "sequence 1 must be a NumPy array or a tensor, got dict"),
        ([None], TypeError, "sequence 0 must be a NumPy array or a tensor, got NoneType"),
        ([np.zeros((0, 2))], ValueError, "sequence 0 has no steps"),
        ([np.float32(1.0)], ValueError, "sequence 0 is a scalar"),
        (np.zeros((3, 4, 2)), TypeError, "must be a list of arrays or tensors, got ndarray"),
    ],
)
def test_pad_sequences_errors_name_the_item(bad, error, match):
    with pytest.raises(error, match=match):
        pad_sequences(bad)


def test_collate_class_ids_and_float_vectors():
    arrays = ragged([5, 2, 3], (4,))
    batch = collate_sequences([(a, c) for a, c in zip(arrays, [2, 0, 7])])
    assert isinstance(batch, PaddedBatch)
    x, lengths, y = batch
    torch.testing.assert_close(x, by_hand(arrays).float(), rtol=0, atol=0)
    assert lengths.tolist() == [5, 2, 3] and y.dtype == torch.long and y.tolist() == [2, 0, 7]
    vectors = [np.array([0.5, -1.0]), np.array([2.0, 3.0]), np.array([1.5, 0.0])]
    _, _, y = collate_sequences(list(zip(arrays, vectors)))
    assert y.dtype == torch.float32 and y.shape == (3, 2)
    torch.testing.assert_close(y, torch.tensor(np.stack(vectors)).float())
    _, _, y = collate_sequences([(a, torch.tensor(v)) for a, v in zip(arrays, [0.25, 1.0, -2.0])])
    assert y.dtype == torch.float32 and y.tolist() == [0.25, 1.0, -2.0]


@pytest.mark.parametrize("batch_first", [False, True])
def test_collate_pads_per_step_labels_and_values(batch_first):
    arrays = ragged([3, 6, 1, 4], (2,), seed=3)
    rng = np.random.default_rng(4)
    labels = [rng.integers(0, 5, size=len(a)) for a in arrays]
    x, lengths, y = SequenceCollate(batch_first=batch_first)(list(zip(arrays, labels)))
    expected = by_hand(labels, pad=-100).long()
    if batch_first:
        expected, x = expected.t(), x.transpose(0, 1)
    assert y.dtype == torch.long
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(x, by_hand(arrays).float(), rtol=0, atol=0)
    values = [rng.normal(size=(len(a), 3)) for a in arrays]
    _, _, y = SequenceCollate(target_padding_value=float("nan"))(list(zip(arrays, values)))
    assert y.shape == (6, 4, 3) and y.dtype == torch.float32
    torch.testing.assert_close(y, by_hand(values, pad=float("nan")).float(), equal_nan=True)


def test_the_per_step_guess_is_kept_for_the_loader_and_can_be_forced():
    collate = SequenceCollate()
    arrays = ragged([3, 5], (1,))
    collate([(arrays[0], np.arange(3)), (arrays[1], np.arange(5))])
    assert collate.per_step is True
    with pytest.raises(ValueError, match="per-step targets must have their sequence's length first; target 1"):
        collate([(arrays[0], np.arange(3)), (arrays[1], np.arange(2))])
    # vectors of 3 values, one sequence happening to have 3 steps: forced per sequence
    _, _, y = SequenceCollate(per_step=False)([(arrays[0], np.ones(3) * 0.5), (arrays[1], np.zeros(3))])
    assert y.shape == (2, 3)


def test_collate_errors():
    arrays = ragged([3, 5], (2,))
    with pytest.raises(ValueError, match="non-empty list"):
        collate_sequences([])
    with pytest.raises(TypeError, match="item 1 is not a \\(sequence, target\\) pair"):
        collate_sequences([(arrays[0], 1), arrays[1]])
    with pytest.raises(TypeError, match="target 0 must be a NumPy array or a tensor, got str"):
        collate_sequences([(arrays[0], "cat"), (arrays[1], "dog")])
    with pytest.raises(ValueError, match="must all have one shape"):
        collate_sequences([(arrays[0], np.zeros(2)), (arrays[1], np.zeros(4))])
    with pytest.raises(ValueError, match="2 sequences but 1 targets"):
        SequenceDataset(arrays, [1])


def test_a_dataloader_feeds_a_model():
    arrays = ragged([9, 2, 5, 7, 3, 4, 8], (3,), seed=5)
    labels = [1, 0, 2, 1, 0, 2, 2]
    loader = DataLoader(SequenceDataset(arrays, labels), batch_size=3, collate_fn=collate_sequences)
    torch.manual_seed(0)
    model = ManyToOne(Stack.build(GRUCell, 3, 8, bidirectional=True), output_size=3).eval()
    seen = []
    for x, lengths, y in loader:
        logits = model(x, lengths)
        # each row equals the model run on that sequence alone
        for b in range(len(y)):
            k = len(seen) + b
            alone = model(torch.from_numpy(arrays[k]).float().unsqueeze(1))
            torch.testing.assert_close(logits[b], alone[0], atol=1e-5, rtol=1e-5)
        seen += y.tolist()
    assert seen == labels
