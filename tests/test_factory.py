"""build_optimizer and parameter grouping (soap/factory.py, soap/grouping.py): which parameter
goes where, decay rules, tied embeddings, HF heads, and unknown parameters refused."""

import copy

import pytest
import torch

from soap import (
    SOAP,
    ChainedOptimizer,
    Muon,
    MuonAdamW,
    Shampoo,
    build_optimizer,
    param_groups,
    resolve_optimizer_class,
)
from soap.adamw import AdamW


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict(
        {
            "embed_tokens": torch.nn.Embedding(50, 8),
            "hidden": torch.nn.Linear(8, 8),
            "norm": torch.nn.LayerNorm(8),
            "lm_head": torch.nn.Linear(8, 50, bias=False),
        }
    )


def test_param_groups_rules():
    groups = param_groups(_tiny_model())
    decay, no_decay = groups
    assert set(decay["param_names"]) == {"hidden.weight", "lm_head.weight"}
    assert "embed_tokens.weight" in no_decay["param_names"] and no_decay["weight_decay"] == 0.0
    assert "hidden.bias" in no_decay["param_names"]


@pytest.mark.parametrize("name", ["adamw", "soap", "shampoo", "muon", "torch.optim.SGD"])
def test_build_optimizer_steps_and_round_trips(name):
    model = _tiny_model()
    kw = {"lr": 0.01}
    opt = build_optimizer(model.named_parameters(), name, **kw)
    tokens = torch.randint(0, 50, (4, 6))

    def step():
        h = model["norm"](model["hidden"](model["embed_tokens"](tokens)))
        loss = torch.nn.functional.cross_entropy(
            model["lm_head"](h).flatten(0, 1), tokens.flatten()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    step()
    # A scheduler reaches every group (Muon's AdamW part has its own base LR).
    base = [g["lr"] for g in opt.param_groups]
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)  # sets lr = base * 0.5
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * b for b in base])
    assert base[0] == pytest.approx(0.01)


def test_resolve_optimizer_errors():
    assert resolve_optimizer_class("SOAP") is SOAP
    assert resolve_optimizer_class("torch.optim:Adam") is torch.optim.Adam
    with pytest.raises(ValueError, match="unknown optimizer"):
        resolve_optimizer_class("nope")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_optimizer_class("nonexistent_pkg.Opt")


class _NanoGPT(torch.nn.Module):
    """nanoGPT's layout: the output projection is tied to the token embedding."""

    def __init__(self, vocab=50, d=8):
        super().__init__()
        self.transformer = torch.nn.ModuleDict(
            {
                "wte": torch.nn.Embedding(vocab, d),
                "wpe": torch.nn.Embedding(16, d),
                "h": torch.nn.Linear(d, d),
                "ln_f": torch.nn.LayerNorm(d),
            }
        )
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer["wte"].weight


def test_tied_embedding_is_the_output_projection_and_decays():
    from soap import classify

    model = _NanoGPT()
    kinds = {i.name: i.kind for i in classify(model)}
    assert kinds == {
        "transformer.wte.weight": "head",  # tied: it is the output projection
        "transformer.wpe.weight": "embed",
        "transformer.h.weight": "matrix",
        "transformer.h.bias": "bias",
        "transformer.ln_f.weight": "norm",
        "transformer.ln_f.bias": "bias",
    }
    decay, no_decay = param_groups(model)
    assert decay["param_names"] == ["transformer.wte.weight", "transformer.h.weight"]
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    muon = build_optimizer(model, "muon", lr=0.02)
    assert [p.shape for p in muon.optimizers[0].param_groups[0]["params"]] == [(8, 8)]
    # Untied, the same model's embedding stops decaying and the head still decays.
    untied = _NanoGPT()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    kinds = {i.name: i.kind for i in classify(untied)}
    assert kinds["transformer.wte.weight"] == "embed" and kinds["lm_head.weight"] == "matrix"


def test_hf_output_embeddings_are_the_head():
    from models import build_model
    from soap import classify

    model = build_model("tiny", vocab_size=300, max_seq_len=16)
    kinds = {i.name: i.kind for i in classify(model)}
    assert kinds["lm_head.weight"] == "head" and kinds["model.embed_tokens.weight"] == "embed"
    assert kinds["model.layers.0.self_attn.q_norm.weight"] == "norm"
    assert {k for k, v in kinds.items() if v == "matrix"} == {
        n for n in kinds if n.startswith("model.layers.") and n.endswith("proj.weight")
    }


def test_unrecognised_parameter_raises_and_rules_place_it():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.gain = torch.nn.Parameter(torch.ones(4))

    with pytest.raises(ValueError, match="'gain'.*rules="):
        param_groups(Scaled())
    decay, no_decay = param_groups(Scaled(), rules={"gain": "no_decay"})
    assert no_decay["param_names"] == ["gain", "lin.bias"]  # named_parameters() order


def test_muon_splits_hidden_matrices():
    opt = build_optimizer(_tiny_model().named_parameters(), "muon", lr=0.02)
    assert isinstance(opt, ChainedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and len(muon.param_groups[0]["params"]) == 1
    assert isinstance(adamw, AdamW)


def test_config_schemas_take_each_optimizers_own_defaults():
    """One home per default: every schema field not listed as the harness's own choice equals
    the optimizer's signature default (scripts/config.py ``own``), so the two cannot drift."""
    import dataclasses
    import inspect

    from scripts import config as C

    harness = {("AdamWConfig", "lr"): C.HARNESS_LR, ("AdamWConfig", "betas"): C.PAPER_BETAS}
    schemas = {
        C.AdamWConfig: torch.optim.AdamW,
        C.SOAPConfig: SOAP,
        C.ShampooConfig: Shampoo,
        C.MuonConfig: MuonAdamW,
    }
    for schema, fn in schemas.items():
        sig = inspect.signature(fn).parameters
        for f in dataclasses.fields(schema):
            if f.name.startswith("_"):
                continue
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            own = harness.get((schema.__name__, f.name), sig[f.name].default)
            assert value == (list(own) if isinstance(own, tuple) else own), (schema, f.name)
    assert inspect.signature(MuonAdamW).parameters["lr"].default == C.HARNESS_LR  # one scale
