"""Defining properties of LoRA and its variants (rsLoRA, DoRA, PiSSA), IA3, and the apply/merge helpers."""
import math

import pytest
import torch
from torch import nn

from llmkit.peft import (IA3Linear, LoRAConv2d, LoRAEmbedding, LoRALinear, apply_ia3, apply_lora, disable_adapters,
                         merge_and_unload, merge_lora, trainable_parameters, unmerge_lora)
from llmkit.peft.base import Adapter

VARIANTS = {
    "lora": dict(),
    "gaussian": dict(init="gaussian"),
    "rslora": dict(use_rslora=True),
    "dora": dict(use_dora=True),
    "dora-dropout": dict(use_dora=True, dropout=0.2),
    "pissa": dict(init="pissa"),
}


def _lora(model, variant, targets="all-linear"):
    return apply_lora(model, targets, r=4, alpha=8, **VARIANTS[variant])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fresh_adapter_is_identity(tiny, ids, variant):
    with torch.no_grad():
        ref = tiny(ids)
        _lora(tiny, variant).eval()
        out = tiny(ids)
    # B = 0 makes it exact; PiSSA moves W's top singular part into B A, exact up to SVD rounding
    tol = 1e-5 if variant == "pissa" else 0.0
    assert (out - ref).abs().max().item() <= tol
    assert sum(isinstance(m, LoRALinear) for m in tiny.modules()) == 2 * 4 + 2 * 3  # q,k,v,o + gate,up,down


def test_embedding_and_conv_adapters_start_as_identity():
    torch.manual_seed(0)
    emb, conv = nn.Embedding(20, 8, padding_idx=0), nn.Conv2d(3, 6, 3, stride=2, padding=1)
    ids, img = torch.randint(0, 20, (2, 5)), torch.randn(2, 3, 9, 9)
    assert torch.equal(LoRAEmbedding(emb, r=2)(ids), emb(ids))
    assert torch.equal(LoRAConv2d(conv, r=2)(img), conv(img))


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "pissa"])
def test_merged_equals_unmerged(tiny, ids, variant, perturb):
    _lora(tiny, variant).eval()
    perturb(tiny)
    with torch.no_grad():
        unmerged = tiny(ids)
        merge_lora(tiny)
        merged = tiny(ids)
    assert all(m.merged for m in tiny.modules() if isinstance(m, LoRALinear))
    assert (merged - unmerged).abs().max().item() < 1e-5
    assert (merged - unmerged).abs().max().item() < 1e-3 * unmerged.abs().max().item()


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_unmerge_restores_base_weights(tiny, variant, perturb):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    _lora(tiny, variant)
    perturb(tiny, scale=0.5)
    merge_lora(tiny)
    merged = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = tiny.model.layers[0].self_attn.q_proj
    assert not torch.allclose(q.base_layer.weight, before["model.layers.0.self_attn.q_proj.weight"])
    unmerge_lora(tiny)
    after = tiny.state_dict()
    # Not bit-exact: W + D rounds to the float32 grid of |W + D|, and subtracting D again leaves that
    # rounding (DoRA also scales by m/||W + D|| and back). So each weight returns to within a few ulps
    # of the largest magnitude it passed through, not to the identical bits.
    eps = torch.finfo(torch.float32).eps
    for name, w in before.items():
        key = name.replace("proj.weight", "proj.base_layer.weight")
        tol = 8 * eps * max(w.abs().max().item(), merged[key].abs().max().item())
        assert (after[key] - w).abs().max().item() <= tol, name


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_merge_and_unload_gives_plain_model(tiny, ids, variant, perturb):
    _lora(tiny, variant).eval()
    perturb(tiny)
    with torch.no_grad():
        adapted = tiny(ids)
        plain = merge_and_unload(tiny)
        assert not any(isinstance(m, Adapter) for m in plain.modules())
        assert set(plain.state_dict()) == set(type(plain)(plain.cfg).state_dict())
        assert (plain(ids) - adapted).abs().max().item() < 1e-5


def test_disable_adapters_runs_the_base(tiny, ids, perturb):
    with torch.no_grad():
        base = tiny(ids)
        apply_lora(tiny, ["q_proj", "v_proj", "embed_tokens"], r=4)
        perturb(tiny)
        adapted = tiny(ids)
        with disable_adapters(tiny):
            assert torch.allclose(tiny(ids), base, atol=1e-6)
        assert torch.equal(tiny(ids), adapted)
        merge_lora(tiny)
        with disable_adapters(tiny):  # merged adapters are unmerged for the duration
            assert torch.allclose(tiny(ids), base, atol=1e-5)
        assert torch.allclose(tiny(ids), adapted, atol=1e-5)


def test_only_adapter_parameters_get_gradients(tiny, ids):
    apply_lora(tiny, ["q_proj", "v_proj"], r=4)
    tiny(ids).logsumexp(-1).mean().backward()
    for name, p in tiny.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_gradient_at_init_reaches_b_not_a(tiny, ids):
    """With B = 0, dL/dA = B^T (...) = 0 while dL/dB = (...) (A x)^T is not: only B moves on step one."""
    apply_lora(tiny, ["q_proj", "v_proj"], r=4)
    tiny(ids).logsumexp(-1).mean().backward()
    for m in tiny.modules():
        if isinstance(m, LoRALinear):
            assert m.lora_B.weight.grad.abs().max() > 0
            assert torch.count_nonzero(m.lora_A.weight.grad) == 0


def test_scaling_and_init_distributions():
    lin = nn.Linear(256, 64)
    assert LoRALinear(lin, r=16, alpha=32).scaling == 2.0
    assert LoRALinear(lin, r=16, alpha=32, use_rslora=True).scaling == 32 / math.sqrt(16)
    torch.manual_seed(0)
    kaiming = LoRALinear(lin, r=16).lora_A.weight
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert kaiming.abs().max() <= bound and kaiming.abs().max() > 0.9 * bound
    gauss = LoRALinear(lin, r=16, init="gaussian").lora_A.weight
    assert abs(gauss.std().item() - 1 / 16) < 0.01
    assert torch.count_nonzero(LoRALinear(lin, r=16).lora_B.weight) == 0


def test_pissa_moves_principal_components_out_of_the_base():
    torch.manual_seed(0)
    lin = nn.Linear(48, 32)
    w = lin.weight.detach().clone()
    lora = LoRALinear(lin, r=4, alpha=8, init="pissa")
    u, s, vh = torch.linalg.svd(w)
    principal = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    assert torch.allclose(lora.delta_weight(), principal, atol=1e-5)
    assert torch.allclose(lin.weight, w - principal, atol=1e-5)  # the residual stays frozen in the base
    s_res = torch.linalg.svdvals(lin.weight.detach())
    assert torch.allclose(s_res[:4], s[4:8], atol=1e-5)


def test_dora_matches_its_definition_and_detaches_the_norm():
    """y = m * (W + sBA) x / ||W + sBA||_row + b, with the norm a constant for backprop (DoRA section 4.3)."""
    torch.manual_seed(0)
    lin = nn.Linear(12, 10)
    dora = LoRALinear(lin, r=3, alpha=6, use_dora=True)
    assert torch.allclose(dora.lora_magnitude_vector, lin.weight.norm(dim=1))
    with torch.no_grad():
        dora.lora_B.weight.normal_()
        dora.lora_magnitude_vector.mul_(1.5)
    x = torch.randn(5, 12)
    dora(x).square().sum().backward()
    got = {n: p.grad.clone() for n, p in dora.named_parameters() if p.requires_grad}

    a, b, m = (dora.lora_A.weight.detach().requires_grad_(), dora.lora_B.weight.detach().requires_grad_(),
               dora.lora_magnitude_vector.detach().requires_grad_())
    v = lin.weight.detach() + dora.scaling * b @ a
    y = (m / v.norm(dim=1).detach())[:, None] * v
    ref = x @ y.T + lin.bias.detach()
    assert torch.allclose(dora(x), ref, atol=1e-5)
    ref.square().sum().backward()
    for name, p in (("lora_A.weight", a), ("lora_B.weight", b), ("lora_magnitude_vector", m)):
        assert torch.allclose(got[name], p.grad, atol=1e-4, rtol=1e-4), name


def test_dropout_only_in_training():
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(16, 16), r=4, dropout=0.5)
    nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(3, 16)
    lora.train()
    assert not torch.equal(lora(x), lora(x))
    lora.eval()
    assert torch.equal(lora(x), lora(x))


def test_target_selection(tiny):
    apply_lora(tiny, r"model\.layers\.0\.self_attn\.(q|k)_proj", r=2)
    wrapped = {n for n, m in tiny.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"}
    apply_lora(tiny, "all-linear", r=2)  # adds the rest, never the head, never LoRA inside LoRA
    assert not isinstance(tiny.lm_head, Adapter)
    assert not any(isinstance(m.base_layer, Adapter) for m in tiny.modules() if isinstance(m, LoRALinear))
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(tiny, ["nonexistent"])
    with pytest.raises(ValueError, match="RMSNorm"):
        apply_lora(tiny, ["input_layernorm"])


def test_any_module_tree_conv_and_linear(perturb):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    x = torch.randn(4, 3, 6, 6)
    apply_lora(net, ["0", "3"], r=2).eval()
    assert isinstance(net[0], LoRAConv2d) and isinstance(net[3], LoRALinear)
    perturb(net)
    with torch.no_grad():
        adapted = net(x)
        merge_lora(net)
        assert torch.allclose(net(x), adapted, atol=1e-5)
        plain = merge_and_unload(net)
        assert isinstance(plain[0], nn.Conv2d) and torch.allclose(plain(x), adapted, atol=1e-5)


def test_embedding_merge(perturb):
    torch.manual_seed(0)
    emb = nn.Embedding(20, 8)
    lora = LoRAEmbedding(emb, r=3)
    perturb(lora, scale=0.5)
    ids = torch.randint(0, 20, (4, 6))
    with torch.no_grad():
        out = lora(ids)
        lora.merge()
        assert torch.allclose(lora(ids), out, atol=1e-6)


def test_ia3_identity_merge_and_trainables(tiny, ids, perturb):
    with torch.no_grad():
        ref = tiny(ids)
        apply_ia3(tiny)
        assert torch.equal(tiny(ids), ref)
    ff = tiny.model.layers[0].mlp.down_proj
    assert isinstance(ff, IA3Linear) and ff.feedforward and ff.ia3_l.shape == (1, 48)
    assert tiny.model.layers[0].self_attn.k_proj.ia3_l.shape == (16, 1)
    trainable, total = trainable_parameters(tiny)
    assert trainable == 2 * (16 + 16 + 48)
    perturb(tiny)
    with torch.no_grad():
        adapted = tiny(ids)
        assert (adapted - ref).abs().max() > 1e-3
        merge_lora(tiny)
        assert torch.allclose(tiny(ids), adapted, atol=1e-5)
        unmerge_lora(tiny)
        assert torch.allclose(tiny(ids), adapted, atol=1e-5)


def test_trainable_parameter_count(tiny):
    _, total = trainable_parameters(tiny)
    assert total == tiny.num_parameters()
    apply_lora(tiny, ["q_proj", "v_proj"], r=4)
    trainable, total_after = trainable_parameters(tiny)
    # per layer: q (32 -> 32) and v (32 -> 16): A is r x in, B is out x r
    assert trainable == 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
    assert total_after == total + trainable
