"""Passkey retrieval: the prompt's length and needle depth, the accuracy grid (with an oracle model and a
blind one), the heatmap, and lengths beyond the context."""
from __future__ import annotations

import re

import pytest
import torch

import llmkit.generate
from llmkit import CausalLM, ModelConfig
from llmkit.eval.passkey import FILLER, INTRO, QUESTION, answer_key, passkey, passkey_prompt, plot_heatmap
from llmkit.generate import GenerationResult


@pytest.fixture(scope="module")
def long_model(tokenizer):
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                max_seq_len=512, init_std=0.2)).eval()


def needle_at(prompt: str) -> float:
    """Where the needle sits, as a fraction of the filler around it."""
    body = prompt[len(INTRO):-len(QUESTION)]
    before = body[:re.search(r"The pass key is \d+", body).start()]
    return before.count(FILLER) / body.count(FILLER)


@pytest.mark.parametrize("length", [280, 360, 500])  # the bare prompt is 201 tokens, a filler 73
def test_prompt_length_and_depth(tokenizer, length):
    per_filler = len(tokenizer.encode(FILLER * 2)) - len(tokenizer.encode(FILLER))
    for depth in (0.0, 0.3, 0.5, 1.0):
        prompt = passkey_prompt(tokenizer, length, depth, key=12345)
        n = len(tokenizer.encode(prompt))
        assert length - 2 * per_filler <= n <= length
        assert needle_at(prompt) == pytest.approx(depth, abs=1 / prompt.count(FILLER))
        assert prompt.startswith(INTRO) and prompt.endswith(QUESTION) and prompt.count("12345") == 2


def test_grid_with_an_oracle(monkeypatch, tokenizer, long_model):
    """A model that finds the key only in the first half of the filler fills exactly that half of the grid."""

    def oracle(model, tok, prompts, **kw):
        texts = []
        for p in prompts:
            key = re.search(r"The pass key is (\d+)", p).group(1)
            texts.append(f" {key}. Done" if needle_at(p) <= 0.5 else " 11111.")
        return GenerationResult(texts, [[] for _ in prompts], ["length"] * len(prompts))

    monkeypatch.setattr(llmkit.generate, "generate", oracle)
    r = passkey(long_model, tokenizer, [360, 500], [0.0, 0.25, 0.75, 1.0], trials=2)
    assert r.accuracy == ((1.0, 1.0, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0)) and r.mean == 0.5


def test_real_model_and_heatmap(tokenizer, long_model, tmp_path):
    r = passkey(long_model, tokenizer, [300], [0.0, 1.0], trials=1, batch_size=2)
    assert len(r.accuracy) == 1 and len(r.accuracy[0]) == 2 and all(a in (0.0, 1.0) for a in r.accuracy[0])
    path = plot_heatmap(r, tmp_path / "sub" / "passkey.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically


def test_answer_key():
    assert answer_key(" 48213. Remember") == 48213
    assert answer_key(" is forty") is None


def test_bad_input(tokenizer, long_model):
    with pytest.raises(ValueError, match="length 600 \\+ 8 answer tokens exceeds the model's context of 512"):
        passkey(long_model, tokenizer, [600], [0.5])
    with pytest.raises(ValueError, match="depth must be in"):
        passkey_prompt(tokenizer, 300, 1.5, 1)
    with pytest.raises(ValueError, match="shorter than the passkey prompt"):
        passkey_prompt(tokenizer, 20, 0.5, 1)
