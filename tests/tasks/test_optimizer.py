"""The tasks' optimizer: Adam and AdamW run fused where torch allows it, and update as torch's
default implementation does."""

import pytest
import torch

from rnnkit.tasks.base import make_optimizer
from rnnkit.tasks.charlm import CharLM, CharLMConfig


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_runs_fused_and_updates_as_torchs_default_adam_does(name):
    cfg = CharLMConfig(optimizer=name, hidden_size=16, num_layers=2, embedding_size=8, lr=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    ours = CharLM(11, cfg)
    ref = CharLM(11, cfg)
    ref.load_state_dict(ours.state_dict())
    opt, _ = make_optimizer(cfg, ours)
    assert opt.param_groups[0]["fused"] is True
    ref_opt = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(
        ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=False
    )
    for _ in range(20):
        tokens = torch.randint(0, 11, (7, 3))
        for model, o in ((ours, opt), (ref, ref_opt)):
            logits, _ = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits[:-1].reshape(-1, 11), tokens[1:].reshape(-1))
            o.zero_grad()
            loss.backward()
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_other_optimizers_are_left_unfused_and_float64_runs_fused():
    cfg = CharLMConfig(optimizer="sgd", hidden_size=8, num_layers=1, embedding_size=4)
    opt, _ = make_optimizer(cfg, CharLM(5, cfg))
    assert not opt.param_groups[0].get("fused")
    model = CharLM(5, CharLMConfig(hidden_size=8, num_layers=1, embedding_size=4)).double()
    opt, _ = make_optimizer(CharLMConfig(), model)  # float64 is floating point: fused too
    assert opt.param_groups[0]["fused"] is True
