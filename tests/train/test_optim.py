"""AdamW parameter groups (what decays) and freezing by name pattern."""
import pytest
import torch

from llmkit.model import CausalLM
from llmkit.presets import get_preset
from llmkit.train.optim import build_optimizer, freeze, param_groups

from .helpers import TINY, tiny_cfg


def _model(**changes) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(get_preset("tiny").replace(**{**TINY, **changes}))


def _names(model, group) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_only_matrices_decay_not_norms_biases_or_embeddings():
    model = _model(qkv_bias=True, tie_word_embeddings=False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed, kept = _names(model, decay), _names(model, no_decay)
    assert "model.layers.0.self_attn.q_proj.weight" in decayed and "lm_head.weight" in decayed
    assert "model.embed_tokens.weight" in kept
    assert "model.layers.0.self_attn.q_proj.bias" in kept and "model.norm.weight" in kept
    assert all(p.ndim == 1 for n, p in model.named_parameters() if n in kept and "embed" not in n)
    assert decayed | kept == {n for n, _ in model.named_parameters()}


def test_tied_head_is_the_embedding_and_is_not_decayed():
    model = _model(tie_word_embeddings=True)
    decay, no_decay = param_groups(model, 0.1)
    assert "model.embed_tokens.weight" in _names(model, no_decay)
    assert sum(len(g["params"]) for g in (decay, no_decay)) == len(list(model.parameters()))


def test_weight_decay_is_decoupled(tmp_path):
    """With zero gradients AdamW only decays: w <- w * (1 - lr * wd), norms untouched."""
    model = _model()
    opt = build_optimizer(model, tiny_cfg(tmp_path, weight_decay=0.5, lr=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(after[q], before[q] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(after["model.norm.weight"], before["model.norm.weight"])
    torch.testing.assert_close(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_freeze_glob_and_regex(tmp_path):
    model = _model()
    frozen = freeze(model, ["model.embed_tokens.*", "re:model\\.layers\\.0\\..*_proj\\.weight"])
    assert "model.embed_tokens.weight" in frozen
    assert "model.layers.0.mlp.gate_proj.weight" in frozen and "model.layers.1.mlp.gate_proj.weight" not in frozen
    assert "model.layers.0.input_layernorm.weight" not in frozen  # regex must match the whole name
    opt = build_optimizer(model, tiny_cfg(tmp_path))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt for n, p in model.named_parameters() if n in frozen)
    emb = model.model.embed_tokens.weight.detach().clone()
    model(torch.randint(0, 256, (2, 8))).sum().backward()
    opt.step()
    assert torch.equal(model.model.embed_tokens.weight, emb)


def test_freeze_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze(_model(), ["model.layer.*"])


def test_everything_frozen_is_an_error(tmp_path):
    model = _model()
    freeze(model, ["*"])
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, tiny_cfg(tmp_path))
