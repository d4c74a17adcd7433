"""load_model_and_tokenizer: one directory (or GGUF file) holds both; mismatches are clear errors."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import load_model_and_tokenizer


def _save_model(path, vocab_size):
    torch.manual_seed(0)
    CausalLM(ModelConfig(vocab_size=vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=32)
             ).save_pretrained(path)


def test_directory_with_model_and_tokenizer_loads_both(tmp_path, tokenizer):
    _save_model(tmp_path, tokenizer.vocab_size)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(tmp_path, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16 and not model.training
    assert tok.encode("Hello world") == tokenizer.encode("Hello world")


def test_directory_without_tokenizer_is_a_clear_error(tmp_path):
    _save_model(tmp_path, 300)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_model_and_tokenizer(tmp_path)


def test_tokenizer_larger_than_the_embedding_is_rejected(tmp_path, tokenizer):
    _save_model(tmp_path, tokenizer.vocab_size - 10)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="only embeds"):
        load_model_and_tokenizer(tmp_path)
