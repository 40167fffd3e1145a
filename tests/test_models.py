"""Model presets and the built causal LM."""

import pytest
import torch

from models import PRESETS, build_model, count_parameters
from models.loss import lm_loss_from_logits as lm_loss


@pytest.mark.parametrize("name", ["210m", "360m", "660m"])
def test_preset_non_embedding_count_matches_name(name):
    with torch.device("meta"):
        model = build_model(name, vocab_size=32100)
    counts = count_parameters(model)
    nominal = PRESETS[name].nominal
    assert abs(counts["non_embedding"] - nominal) / nominal < 0.03, counts
    assert counts["non_embedding"] == PRESETS[name].non_embedding_params()
    assert counts["total"] == PRESETS[name].total_params(32100)
    print(name, counts)


def test_tiny_forward_backward_and_untied():
    model = build_model("tiny", vocab_size=300, max_seq_len=32)
    ids = torch.randint(0, 300, (2, 16))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 16, 300)
    _, loss = lm_loss(logits, ids, 1e-4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert (
        model.get_input_embeddings().weight.data_ptr()
        != model.get_output_embeddings().weight.data_ptr()
    )
    assert any("q_norm" in n for n, _ in model.named_parameters())  # QK-norm (OLMo-2)


def test_causal_masking():
    model = build_model("tiny", vocab_size=300, max_seq_len=32).eval()
    ids = torch.randint(0, 300, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 300
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_is_mean_token_cross_entropy():
    model = build_model("tiny", vocab_size=300, max_seq_len=32).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    ce, total = lm_loss(logits, ids, 0.0)
    manual = []
    for b in range(2):
        for t in range(11):
            logp = torch.log_softmax(logits[b, t].double(), -1)
            manual.append(-logp[ids[b, t + 1]])
    assert ce.item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(ce.item())
    _, with_z = lm_loss(logits, ids, 1e-4)
    assert with_z.item() > ce.item()


def test_same_seed_same_weights_and_llama_without_qk_norm():
    a = build_model("tiny", vocab_size=300, seed=3)
    b = build_model("tiny", vocab_size=300, seed=3)
    c = build_model("tiny", vocab_size=300, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    llama = build_model("tiny", vocab_size=300, qk_norm=False)
    assert not any("q_norm" in n for n, _ in llama.named_parameters())


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("1b")
