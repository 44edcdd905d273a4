import math

import torch

from rnnkit.data.corpus import CharVocab
from rnnkit.tasks.charlm import CharLM, CharLMConfig, evaluate_bpc, lanes, sample, unigram_bpc


def test_lanes_split_the_stream_into_parallel_time_major_rows():
    data = torch.arange(23)
    out = lanes(data, 4)  # 5 steps per lane, the tail of 3 dropped
    assert out.shape == (5, 4)
    assert out[:, 1].tolist() == [5, 6, 7, 8, 9]  # lane 1 continues where lane 0 stopped


def test_unigram_baseline_is_the_entropy_of_the_character_frequencies():
    train = torch.tensor([0, 0, 0, 1] * 1000)
    val = torch.tensor([0, 0, 0, 1] * 10)
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert abs(unigram_bpc(train, val, 2) - expected) < 1e-3


def test_untrained_model_bpc_is_near_log2_vocab_and_sampling_is_seeded():
    torch.manual_seed(0)
    vocab = CharVocab.from_text("abcdefgh")
    cfg = CharLMConfig(hidden_size=16, num_layers=2, embedding_size=8)
    model = CharLM(len(vocab), cfg)
    data = torch.randint(0, 8, (2000,))
    assert abs(evaluate_bpc(model, data, batch_size=4, seq_length=25) - 3.0) < 0.2
    a = sample(model, vocab, 40, prime="ab", generator=torch.Generator().manual_seed(1))
    b = sample(model, vocab, 40, prime="ab", generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 40 and set(a) <= set("abcdefgh")
