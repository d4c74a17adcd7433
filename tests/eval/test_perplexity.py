"""Perplexity: parity with transformers' documented strided recipe, the windowing's defining properties,
bits per byte, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from llmkit.eval.perplexity import perplexity, sliding_windows, windowed_nll
from tests.eval.conftest import CONTEXT, TEXT


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory, tokenizer):
    """(transformers' tiny random Llama, the same directory loaded by llmkit, its tokenizer)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from llmkit.generate import load_model_and_tokenizer

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT, initializer_range=0.25,
        tie_word_embeddings=False)).float().eval()
    path = tmp_path_factory.mktemp("hf_llama")
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    model, tok = load_model_and_tokenizer(path)
    return hf, model, tok


def hf_recipe(model, input_ids: torch.Tensor, max_length: int, stride: int):
    """transformers' "Perplexity of fixed-length models" loop, verbatim but for collecting each window's
    loss and its true count of scored labels (the recipe's ``num_loss_tokens`` is trg_len - 1)."""
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc, windows = 0.0, 0, 0, []
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(ids, labels=target_ids).loss
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        nll_sum += loss * num_loss_tokens
        n_tokens += num_loss_tokens
        scored = int((target_ids[:, 1:] != -100).sum())  # labels the shifted loss really averages over
        windows.append((begin_loc, end_loc, float(loss), scored))
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), windows


@pytest.mark.parametrize("stride,text", [(CONTEXT // 2, TEXT * 2), (7, TEXT * 2), (24, TEXT[:150])])
def test_matches_transformers_recipe(hf_pair, stride, text):
    hf, model, tok = hf_pair
    ids = [tok.eos_id] + tok.encode(text, add_special_tokens=False)
    recipe_ppl, hf_windows = hf_recipe(hf, torch.tensor([ids]), CONTEXT, stride)
    nll, n, windows = windowed_nll(model, ids, window=CONTEXT, stride=stride)
    # the same windows score the same tokens with the same mean loss
    assert [(b, e, k) for b, e, _, k in hf_windows] == windows
    total_hf = sum(loss * k for *_, loss, k in hf_windows)
    assert n == len(ids) - 1 == sum(k for *_, k in hf_windows)
    assert nll == pytest.approx(total_hf, rel=1e-5)
    ours = perplexity(model, tok, text, window=CONTEXT, stride=stride)
    assert ours.tokens == n and ours.perplexity == pytest.approx(math.exp(total_hf / n), rel=1e-5)
    if len(windows) == 1:  # only then is the recipe's trg_len - 1 weighting exact
        assert ours.perplexity == pytest.approx(recipe_ppl, rel=1e-5)


def test_every_token_scored_once():
    for n, window, stride in [(200, 64, 32), (200, 64, 63), (200, 64, 1), (10, 64, 32), (65, 64, 16)]:
        windows = sliding_windows(n, window, stride)
        scored = [t for b, e, k in windows for t in range(e - k, e)]
        assert scored == list(range(1, n)), (n, window, stride)
        assert all(e - b <= window and e - k >= b + 1 for b, e, k in windows)
        # after the first window each token has at least window - stride tokens of context
        assert all(e - k - b >= min(window - stride, e - k) for b, e, k in windows[1:])


def test_full_context_equals_one_forward(tiny):
    """A text inside one window is one forward pass: the NLL is plain cross-entropy."""
    model, tok = tiny
    ids = tok.encode(TEXT, add_special_tokens=False)[:CONTEXT]
    nll, n, windows = windowed_nll(model, ids, stride=8)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="sum")
    assert len(windows) == 1 and n == len(ids) - 1
    assert nll == pytest.approx(float(expected), rel=1e-5)


def test_bits_per_byte(tiny):
    model, tok = tiny
    result = perplexity(model, tok, TEXT)
    assert result.bytes == len(TEXT.encode()) and result.tokens == len(tok.encode(TEXT, add_special_tokens=False))
    assert result.bits_per_byte == pytest.approx(result.nll * result.tokens / math.log(2) / result.bytes)
    assert result.perplexity == pytest.approx(math.exp(result.nll))


def test_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="larger than the model's context of 64"):
        perplexity(model, tok, TEXT, window=65)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tok, TEXT, window=32, stride=32)
    with pytest.raises(ValueError, match="empty"):
        perplexity(model, tok, "  \n")
