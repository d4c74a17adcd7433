"""NF4 quantisation, double quantisation, Linear4bit and a QLoRA training step."""
import copy

import pytest
import torch
from torch import nn

from llmkit.peft import (NF4_CODE, Linear4bit, LoRALinear, apply_lora, dequantize_nf4, merge_and_unload,
                         quantize_model_4bit, quantize_nf4, trainable_parameters)
from llmkit.peft.nf4 import dequantize_absmax, quantize_absmax

# QLoRA paper (Dettmers et al. 2023), appendix E: the NF4 data type's 16 values
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_nf4_code_values_equal_the_paper():
    # our values come from the quantile construction, the table from the paper; they agree to float32 rounding
    assert torch.allclose(NF4_CODE, torch.tensor(PAPER_NF4), atol=1e-6, rtol=0)
    assert NF4_CODE[7] == 0.0 and (NF4_CODE > 0).sum() == 8 and (NF4_CODE < 0).sum() == 7


def test_codes_round_trip_exactly_and_pack_two_per_byte():
    absmax = torch.tensor([2.0, 0.5])
    x = torch.cat([NF4_CODE.repeat(4) * absmax[0], NF4_CODE.flip(0).repeat(4) * absmax[1]])  # 2 blocks of 64
    packed, got_absmax = quantize_nf4(x)
    assert packed.dtype == torch.uint8 and packed.numel() == x.numel() // 2
    assert torch.equal(got_absmax, absmax)
    assert torch.equal(dequantize_nf4(packed, got_absmax, x.numel()), x)


def test_quantisation_error_is_within_half_a_code_gap():
    torch.manual_seed(0)
    x = torch.randn(1000, 37)  # numel not a multiple of 64: the last block is zero-padded
    packed, absmax = quantize_nf4(x)
    err = (dequantize_nf4(packed, absmax, x.numel()).view_as(x) - x).abs().flatten()
    block_absmax = absmax.repeat_interleave(64)[: x.numel()]
    half_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2
    assert (err <= half_gap * block_absmax + 1e-6).all()
    # NF4 is built for normal data: it beats a uniform 4-bit absmax grid on it
    uniform = torch.linspace(-1, 1, 16)
    blocks = nn.functional.pad(x.flatten(), (0, -x.numel() % 64)).view(-1, 64)
    scaled = blocks / blocks.abs().amax(1, keepdim=True)
    uniform_err = ((scaled[..., None] - uniform).abs().min(-1).values * blocks.abs().amax(1, keepdim=True))
    assert err.square().mean() < 0.9 * uniform_err.flatten()[: x.numel()].square().mean()


def test_double_quantisation_of_the_scales():
    torch.manual_seed(0)
    absmax = 2.5 + 0.4 * torch.randn(1000).abs()
    codes, scale, offset = quantize_absmax(absmax)
    assert codes.dtype == torch.float8_e4m3fn and scale.numel() == 4  # blocks of 256
    back = dequantize_absmax(codes, scale, offset)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of the centred value, plus the subnormal step
    dev = (absmax - offset).abs()
    step = scale.repeat_interleave(256)[:1000]
    assert ((back - absmax).abs() <= dev * 2**-4 + step * 2**-9 + 1e-6).all()
    assert ((back - absmax).abs() / absmax).max() < 0.02


def test_linear4bit_forward_backward_match_the_dequantised_weight():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=True)
    q = Linear4bit.from_linear(lin)
    w = q.dequantize()
    assert (w - lin.weight).abs().max() < 0.2 * lin.weight.abs().max()
    x = torch.randn(3, 5, 96, requires_grad=True)
    y = q(x)
    ref_x = x.detach().clone().requires_grad_()
    ref = nn.functional.linear(ref_x, w, lin.bias.detach())
    assert torch.allclose(y, ref, atol=1e-5)
    y.square().sum().backward()
    ref.square().sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-4)
    assert not any(p.requires_grad for p in q.parameters())


def test_qlora_frozen_weights_take_half_a_byte_per_parameter(tiny):
    quantize_model_4bit(tiny)
    apply_lora(tiny, "all-linear", r=4)
    assert isinstance(tiny.lm_head, nn.Linear) and not isinstance(tiny.model.embed_tokens, Linear4bit)
    q4 = [m for m in tiny.modules() if isinstance(m, Linear4bit)]
    assert len(q4) == 2 * 7 and all(isinstance(m, Linear4bit) for m in
                                    (lo.base_layer for lo in tiny.modules() if isinstance(lo, LoRALinear)))
    stored = sum(b.numel() * b.element_size() for m in q4 for b in m.buffers())
    params = sum(m.in_features * m.out_features for m in q4)
    # 4 bits + 8/64 (fp8 absmax) + 32/(64*256) (fp32 second-level scale), a little more with block padding
    assert 0.5 <= stored / params <= 0.53
    trainable, total = trainable_parameters(tiny)
    assert total == tiny.num_parameters() + params and trainable > 0


def test_qlora_training_steps_lower_the_loss(tiny):
    torch.manual_seed(0)
    quantize_model_4bit(tiny)
    apply_lora(tiny, "all-linear", r=8, alpha=16)
    tiny.train()
    ids = torch.randint(0, tiny.cfg.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in tiny.parameters() if p.requires_grad], lr=1e-2)
    frozen = {k: v.clone() for k, v in tiny.state_dict().items() if "lora_" not in k}
    losses = []
    for _ in range(8):
        logits = tiny(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in frozen.items())  # the 4-bit base never moves


def test_merge_and_unload_dequantises_a_4bit_base(tiny, ids, perturb):
    quantize_model_4bit(tiny)
    apply_lora(tiny, ["q_proj", "v_proj"], r=4).eval()
    perturb(tiny)
    with torch.no_grad():
        adapted = tiny(ids)
        plain = merge_and_unload(tiny)
        assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
        assert isinstance(plain.model.layers[0].self_attn.k_proj, Linear4bit)
        assert torch.allclose(plain(ids), adapted, atol=1e-5)


def test_pissa_then_quantise_keeps_the_principal_part_in_full_precision(tiny, ids):
    """QPiSSA: quantising PiSSA's residual loses less than quantising the whole weight (PiSSA paper, sec. 4)."""
    with torch.no_grad():
        ref = tiny(ids)
        plain = quantize_model_4bit(copy.deepcopy(tiny))
        pissa = quantize_model_4bit(apply_lora(copy.deepcopy(tiny), "all-linear", r=8, init="pissa"))
        assert all(isinstance(m.base_layer, Linear4bit) for m in pissa.modules() if isinstance(m, LoRALinear))
        assert (pissa(ids) - ref).abs().mean() < 0.8 * (plain(ids) - ref).abs().mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes parity needs CUDA")
def test_matches_bitsandbytes_nf4():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.randn(256, 128, device="cuda")
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    theirs = bnb.functional.dequantize_4bit(packed, state).float()
    ours_packed, absmax = quantize_nf4(w.cpu())
    ours = dequantize_nf4(ours_packed, absmax, w.numel()).view_as(w)
    assert torch.allclose(state.absmax.float().cpu(), absmax)
    # identical codes except values within float rounding of a decision boundary
    assert (ours != theirs.cpu()).float().mean() < 1e-3
