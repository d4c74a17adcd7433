"""Every PEFT method: only its parameters train, the base stays untouched, and cached decoding
token by token equals the full forward of the same adapted model."""
import pytest
import torch
import torch.nn.functional as F

from llmkit.peft import (BottleneckAdapter, apply_bottleneck, apply_ia3, apply_lora, apply_prefix_tuning,
                         apply_prompt_tuning, disable_adapters, quantize_model_4bit, trainable_parameters)

METHODS = {
    "lora": lambda m: apply_lora(m, "all-linear", r=4),
    "dora": lambda m: apply_lora(m, ["q_proj", "v_proj", "up_proj"], r=4, use_dora=True),
    "qlora": lambda m: apply_lora(quantize_model_4bit(m), "all-linear", r=4),
    "ia3": apply_ia3,
    "houlsby": lambda m: apply_bottleneck(m, "houlsby", size=8),
    "pfeiffer": lambda m: apply_bottleneck(m, "pfeiffer", size=8),
    "prompt": lambda m: apply_prompt_tuning(m, n_virtual=5),
    "p-tuning-mlp": lambda m: apply_prompt_tuning(m, n_virtual=5, encoder="mlp", encoder_hidden=16),
    "p-tuning-lstm": lambda m: apply_prompt_tuning(m, n_virtual=5, encoder="lstm", encoder_hidden=16),
    "prefix": lambda m: apply_prefix_tuning(m, n_prefix=4, hidden=16),
}


def _frozen_state(model):
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
            if not t.requires_grad}


def _loss(model, ids):
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_only_adapter_parameters_train_and_the_base_is_untouched(tiny, method):
    torch.manual_seed(0)
    model = METHODS[method](tiny).train()
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < 0.5 * total
    frozen = _frozen_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, tiny.cfg.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(6):
        loss = _loss(model, ids)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, s) for p, s in zip(params, start))
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for name, t in frozen.items():
        assert torch.equal(after[name], t), name


def _greedy_cached(model, prompt, steps):
    b, t = prompt.shape
    model.setup_caches(b, t + steps)
    logits = model(prompt, input_pos=torch.arange(t))[:, -1]
    out = []
    for i in range(steps):
        out.append(logits)
        nxt = logits.argmax(-1, keepdim=True)
        prompt = torch.cat([prompt, nxt], dim=1)
        logits = model(nxt, input_pos=torch.tensor([t + i]))[:, -1]
    return prompt, torch.stack(out, dim=1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cached_greedy_decode_equals_full_forward(tiny, method, perturb):
    torch.manual_seed(0)
    model = METHODS[method](tiny).eval()
    perturb(model, scale=0.3)  # make every adapter non-trivial
    prompt = torch.randint(0, tiny.cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    steps = 8
    with torch.no_grad():
        with disable_adapters(model):
            base = model(prompt)
        assert (model(prompt) - base).abs().max() > 1e-2  # the adapter changes the output
        seq, cached = _greedy_cached(model, prompt, steps)
        full = model(seq)[:, prompt.shape[1] - 1: -1]  # logits that predicted each generated token
    assert (cached - full).abs().max().item() < 1e-4
    assert torch.equal(seq[:, prompt.shape[1]:], full.argmax(-1))


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_left_padding_matches_the_unpadded_sequence(tiny, method, perturb):
    model = METHODS[method](tiny).eval()
    perturb(model, scale=0.3)
    ids = torch.randint(0, tiny.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        alone = model(ids[:1, 3:])
    assert (padded[0, 3:] - alone[0]).abs().max().item() < 1e-4


def test_bottleneck_placement_and_identity(tiny, ids):
    with torch.no_grad():
        ref = tiny(ids)
        apply_bottleneck(tiny, "houlsby", size=8)
        assert torch.equal(tiny(ids), ref)  # W_up = 0
    layer = tiny.model.layers[0]
    assert isinstance(layer.self_attn.o_proj, BottleneckAdapter) and isinstance(layer.mlp.down_proj, BottleneckAdapter)
    assert not isinstance(layer.self_attn.q_proj, BottleneckAdapter)
