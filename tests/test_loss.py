"""The chunked loss equals the full-logits formula, values and gradients."""

import pytest
import torch

from models import build_model
from models.loss import CausalLMWithLoss, lm_loss, lm_loss_from_logits


@pytest.mark.parametrize("z_loss,chunk", [(0.0, 7), (1e-4, 7), (1e-2, 1000), (1e-4, 1)])
def test_chunked_loss_and_gradients_match_full_logits(z_loss, chunk):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 9, 16, generator=gen, dtype=torch.float64).float().requires_grad_()
    w = (0.5 * torch.randn(50, 16, generator=gen)).requires_grad_()
    ids = torch.randint(0, 50, (3, 9), generator=gen)
    ce, total = lm_loss(h, w, ids, z_loss, chunk)
    total.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ce_ref, total_ref = lm_loss_from_logits(h @ w.T, ids, z_loss)
    total_ref.backward()
    torch.testing.assert_close(ce, ce_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, total_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-7)
    assert not ce.requires_grad


def test_model_with_loss_equals_logits_path_and_trains():
    torch.manual_seed(0)
    lm = build_model("tiny", vocab_size=300, max_seq_len=32)
    model = CausalLMWithLoss(lm, z_loss=1e-4, chunk=5)
    ids = torch.randint(0, 300, (2, 16))
    ce, total = model(ids)
    total.backward()
    grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    ce_ref, total_ref = lm_loss_from_logits(lm(input_ids=ids).logits, ids, 1e-4)
    total_ref.backward()
    torch.testing.assert_close(total, total_ref, rtol=1e-5, atol=1e-6)
    for n, p in lm.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    with torch.no_grad():  # evaluation: no gradient work
        ce_eval, _ = model(ids)
    assert ce_eval.item() == pytest.approx(ce_ref.item(), rel=1e-5)


def test_evaluation_skips_the_gradient_work_and_gives_the_same_loss(monkeypatch):
    """Under no_grad an autograd Function still sees needs_input_grad; lm_loss must not form
    the softmax gradient there (it was 2/3 of every evaluation's loss work)."""
    import models.loss as L

    seen = []
    real = L._fused

    def spy(*args, need_grad):
        seen.append(need_grad)
        return real(*args, need_grad=need_grad)

    monkeypatch.setattr(L, "_fused", spy)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(2, 9, 16, generator=gen).requires_grad_()
    w = torch.randn(50, 16, generator=gen).requires_grad_()
    ids = torch.randint(0, 50, (2, 9), generator=gen)
    ce_train, total_train = lm_loss(h, w, ids, 1e-4, 5)
    with torch.no_grad():
        ce_eval, total_eval = lm_loss(h, w, ids, 1e-4, 5)
    ce_frozen, _ = lm_loss(h.detach(), w.detach(), ids, 1e-4, 5)
    assert seen == [True, False, False]
    assert torch.equal(ce_eval, ce_train.detach()) and torch.equal(ce_frozen, ce_eval)
    assert torch.equal(total_eval, total_train.detach())


def test_default_chunk_is_cache_sized_on_cpu_and_large_on_accelerators():
    from models.loss import chunk_tokens

    assert chunk_tokens(4096, None, "cpu") == 256  # at most 256 tokens
    assert chunk_tokens(32100, None, "cpu") == 130  # ~16 MB of fp32 logits
    assert chunk_tokens(300_000, None, "cpu") == 64  # never thinner than 64 tokens
    assert chunk_tokens(4096, None, "cuda") == 8192  # 32M logits, ~128 MB
    assert chunk_tokens(4096, 100, "cpu") == chunk_tokens(4096, 100, "cuda") == 100
