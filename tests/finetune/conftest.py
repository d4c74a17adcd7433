"""A tiny chat model directory and a few conversations, shared by the fine-tuning tests."""
import json

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.tokenizer import Tokenizer

QA = [("What is the capital of France?", "Paris is the capital of France."),
      ("Who wrote Emma?", "Jane Austen wrote Emma."),
      ("What colour is the sky?", "The sky is blue on a clear day."),
      ("How many legs has a cat?", "A cat has four legs."),
      ("Name a fruit.", "An apple is a fruit."),
      ("What do bees make?", "Bees make honey.")]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random CausalLM (tied embeddings) with a BPE tokenizer trained on the conversations."""
    text = " ".join(q + " " + a for q, a in QA) * 20
    tokenizer = Tokenizer.train([text], vocab_size=320)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=128, init_std=0.2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_chat")
    CausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chats(tmp_path_factory):
    """(train.jsonl, val.jsonl): the six conversations twice over, and four of them for validation."""
    folder = tmp_path_factory.mktemp("chats")
    for name, pairs in (("train", QA * 2), ("val", QA[:4])):
        lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                 for q, a in pairs]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl", folder / "val.jsonl"
