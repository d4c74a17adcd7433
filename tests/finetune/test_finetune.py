"""``llmkit.finetune`` on a tiny random chat model: every method trains its own parameters only, and what it
saves (a PEFT adapter for every method but full, the merged or full model) reproduces the trained model's logits."""
from pathlib import Path

import pytest
import torch

from llmkit import CausalLM
from llmkit.finetune import FinetuneConfig, attach, finetune, prepare_base
from llmkit.generate import generate
from llmkit.io.hf import read_hf_state_dict
from llmkit.peft import load_adapter
from llmkit.tokenizer import Tokenizer
from llmkit.train.checkpoint import latest_checkpoint

METHODS = ("lora", "dora", "qlora", "full", "prefix", "prompt")


def config(tiny_dir, chats, out_dir, **kw) -> FinetuneConfig:
    """A 3-step run on the tiny model; ``kw`` overrides."""
    train, val = chats
    base = dict(model=str(tiny_dir), data=str(train), val_data=str(val), out_dir=str(out_dir), r=4, alpha=8,
                n_virtual=4, max_steps=3, batch_size=4, seq_len=64, warmup_steps=1, device="cpu", samples=1,
                plot=False)
    return FinetuneConfig(**{**base, **kw})


def initial_model(tiny_dir, cfg: FinetuneConfig) -> torch.nn.Module:
    """The model training starts from, built as ``finetune`` builds it (same seed, same init)."""
    model = prepare_base(CausalLM.from_pretrained(tiny_dir).float(), cfg.method)
    torch.manual_seed(cfg.seed)
    return attach(model, cfg)


def trained_model(tiny_dir, cfg: FinetuneConfig) -> torch.nn.Module:
    """The model the run ended with: the initial model holding the final checkpoint's tensors."""
    model = initial_model(tiny_dir, cfg)
    state = read_hf_state_dict(latest_checkpoint(Path(cfg.out_dir) / "train"), None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # a tied head is stored once
    return model.eval()


@pytest.fixture(scope="module", params=METHODS)
def run(request, tiny_dir, chats, tmp_path_factory):
    """(config, report) of one finished run per method; the LoRA family also writes the merged model."""
    method = request.param
    cfg = config(tiny_dir, chats, tmp_path_factory.mktemp(method), method=method,
                 merge=method in ("lora", "dora", "qlora"))
    return cfg, finetune(cfg)


@pytest.fixture(scope="module")
def ids(tiny_dir):
    tok = Tokenizer.from_pretrained(tiny_dir)
    return torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Who wrote Emma?"}], tokenize=True)])


def test_report_and_outputs(run):
    cfg, report = run
    out = Path(cfg.out_dir)
    assert report["steps"] == 3 and report["before"]["val_tokens"] == report["after"]["val_tokens"] > 0
    assert report["before"]["val_loss"] != report["after"]["val_loss"]
    assert 0 < report["trainable_parameters"] <= report["total_parameters"]
    assert (report["trainable_parameters"] == report["total_parameters"]) == (cfg.method == "full")
    assert [set(s) for s in report["samples"]] == [{"question", "reference", "before", "after"}]
    assert (out / "finetune.json").is_file() and (out / "train" / "metrics.jsonl").is_file()
    assert not (out / "train" / "model").exists()  # the Trainer exported to adapter/ or model/ instead
    peft = {"adapter_config.json", "adapter_model.safetensors"}
    expected = {"lora": peft, "dora": peft, "qlora": peft, "prefix": peft, "prompt": peft, "full": set()}
    assert {p.name for p in (out / "adapter").glob("*")} == expected[cfg.method]
    assert (out / "model" / "tokenizer.json").is_file() == (cfg.merge or cfg.method == "full")


def test_only_the_methods_parameters_change(run, tiny_dir):
    cfg, _ = run
    start = initial_model(tiny_dir, cfg)
    trainable = {n for n, p in start.named_parameters() if p.requires_grad}
    end = read_hf_state_dict(latest_checkpoint(Path(cfg.out_dir) / "train"), None)
    before = {k: v for k, v in start.state_dict().items() if k in end}
    assert set(end) - set(before) == set() and set(before) >= trainable
    changed = {k for k in before if not torch.equal(before[k], end[k])}
    assert changed == trainable
    if cfg.method in ("lora", "dora", "qlora"):
        assert trainable and all(".lora_" in n for n in trainable)
    if cfg.method == "qlora":
        assert any(v.dtype == torch.uint8 for v in end.values())  # the NF4 base, stored and unchanged


def test_saved_outputs_reproduce_the_trained_model(run, tiny_dir, ids):
    cfg, _ = run
    out = Path(cfg.out_dir)
    with torch.no_grad():
        want = trained_model(tiny_dir, cfg)(ids)
        base = prepare_base(CausalLM.from_pretrained(tiny_dir).float(), cfg.method)
        if cfg.method != "full":
            torch.testing.assert_close(load_adapter(base, out / "adapter").eval()(ids), want, rtol=0, atol=1e-5)
        if cfg.merge or cfg.method == "full":
            merged = CausalLM.from_pretrained(out / "model")
            torch.testing.assert_close(merged(ids), want, rtol=0, atol=1e-4)


def test_cached_generate_on_virtual_tokens_equals_naive_greedy(run, tiny_dir, ids):
    cfg, _ = run
    if cfg.method not in ("prefix", "prompt"):
        pytest.skip("only prefix/prompt models wrap the whole model")
    model, tok = trained_model(tiny_dir, cfg), Tokenizer.from_pretrained(tiny_dir)
    seq = ids
    with torch.no_grad():
        for _ in range(6):  # full forward over the whole sequence each step, no cache
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
        got = generate(model, tok, [{"role": "user", "content": "Who wrote Emma?"}], max_new_tokens=6).token_ids[0]
    assert got == seq[0, ids.shape[1]:ids.shape[1] + len(got)].tolist()


def test_merging_virtual_tokens_is_refused():
    with pytest.raises(ValueError, match="cannot be merged"):
        FinetuneConfig(method="prompt", merge=True).validate()
