"""The training step's defining properties: accumulation, recomputation, precision."""
import copy
import functools

import pytest
import torch
from safetensors.torch import load_file

from llmkit.model import CausalLM
from llmkit.presets import get_preset
from llmkit.train import Data, Trainer
from llmkit.train.activation_checkpoint import enable

from .helpers import TINY, RandomBatches, params, tiny_cfg


class ListBatches:
    """Yields the given batches in order; position is the index."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __next__(self):
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_b(tmp_path):
    """Two steps of accumulate(2 x b=2) == two steps of one batch of 4, with uneven -100 targets (SFT-like)."""
    src = RandomBatches(batch=2, seq=16, ignore_frac=0.5)
    micro = [next(src) for _ in range(4)]
    micro[1][1][:, 4:] = -100  # uneven target counts between micro-batches
    whole = [tuple(torch.cat(parts) for parts in zip(*micro[i:i + 2])) for i in (0, 2)]
    a = Trainer(tiny_cfg(tmp_path / "a", batch_size=2, grad_accum=2), data=Data(ListBatches(micro)))
    b = Trainer(tiny_cfg(tmp_path / "b", batch_size=4, grad_accum=1), data=Data(ListBatches(whole)))
    for _ in range(2):
        ra, rb = a.train_step(), b.train_step()
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
        assert ra["tokens"] == rb["tokens"]
    pa, pb = params(a.model), params(b.model)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_activation_checkpointing_gives_equal_gradients_with_dropout():
    torch.manual_seed(0)
    plain = CausalLM(get_preset("tiny").replace(**TINY, resid_dropout=0.2, attn_dropout=0.1)).train()
    recomputed = copy.deepcopy(plain)
    assert enable(recomputed) == 2
    x = torch.randint(0, 256, (2, 16))
    for model in (plain, recomputed):
        torch.manual_seed(1)
        model(x).float().logsumexp(-1).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert set(plain.state_dict()) == set(recomputed.state_dict())  # names unchanged


def test_grad_checkpointing_run_matches_a_plain_run(tmp_path):
    a = Trainer(tiny_cfg(tmp_path / "a", max_steps=2), data=Data(RandomBatches()))
    b = Trainer(tiny_cfg(tmp_path / "b", max_steps=2, grad_checkpointing=True), data=Data(RandomBatches()))
    for _ in range(2):
        assert a.train_step()["loss"] == pytest.approx(b.train_step()["loss"], rel=1e-6)


def test_bf16_autocast_trains_on_cpu_with_fp32_master_weights(tmp_path):
    fp32 = Trainer(tiny_cfg(tmp_path / "a"), data=Data(RandomBatches()))
    bf16 = Trainer(tiny_cfg(tmp_path / "b", dtype="bf16"), data=Data(RandomBatches()))
    l32, l16 = fp32.train_step()["loss"], bf16.train_step()["loss"]
    assert l16 == pytest.approx(l32, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        Trainer(tiny_cfg(tmp_path, dtype="fp16"), data=Data(RandomBatches()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaler_on_cuda(tmp_path):
    t = Trainer(tiny_cfg(tmp_path, dtype="fp16", device="cuda"), data=Data(RandomBatches()))
    losses = [t.train_step()["loss"] for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and t.scaler.is_enabled()


def test_grad_clip_bounds_the_update_norm(tmp_path):
    t = Trainer(tiny_cfg(tmp_path, grad_clip=1e-3, lr=1.0, warmup_steps=0), data=Data(RandomBatches()))
    t.optimizer.step = lambda: None  # keep the gradients for inspection (AdamW would normalise them)
    t.optimizer.zero_grad = lambda set_to_none=True: None
    record = t.train_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.trainable]))
    assert record["grad_norm"] > 1e-3 and norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_moe_load_balancing_loss_enters_the_gradient(tmp_path):
    """The logged loss is the LM loss alone; the router's update also follows the aux loss times its coefficient."""
    routers, losses = [], []
    for coef in (0.0, 10.0):
        moe = dict(n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32, router_aux_loss_coef=coef)
        t = Trainer(tiny_cfg(tmp_path / str(coef), model_overrides=moe), data=Data(RandomBatches()))
        losses.append(t.train_step()["loss"])
        routers.append(t.model.model.layers[0].mlp.gate.weight.detach().clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert not torch.allclose(routers[0], routers[1])



def test_torch_compile_matches_eager_and_saves_plain_names(tmp_path, monkeypatch):
    """The compiled module trains; checkpoints come from the plain model (no ``_orig_mod.`` prefix).

    Inductor's C++ code generation takes about a minute on a busy CPU, so the graph is run with
    ``aot_eager``: this checks llmkit's wiring (forward/backward through the compiled module, gradient
    sync and saving through the plain one), not torch's code generation.
    """
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    eager = Trainer(tiny_cfg(tmp_path / "a"), data=Data(RandomBatches()))
    compiled = Trainer(tiny_cfg(tmp_path / "b", compile=True, max_steps=2), data=Data(RandomBatches()))
    assert compiled.module is not compiled.model
    for _ in range(2):
        assert compiled.train_step()["loss"] == pytest.approx(eager.train_step()["loss"], rel=1e-5)
    compiled.fit()
    saved = load_file(str(tmp_path / "b" / "run" / "model" / "model.safetensors"))
    assert "model.norm.weight" in saved and not any("_orig_mod" in k for k in saved)
