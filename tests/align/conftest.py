"""A tiny random chat model and small alignment data files shared by the loop tests.

The preference rule is one a tiny model can learn and generalise: the chosen
answer ends "Thank you.", the rejected one "Go away."; held-out pairs ask
different questions with the same rule.
"""
from __future__ import annotations

import json

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.tokenizer import Tokenizer

QUESTIONS = ["What is the capital of France?", "Who wrote Emma?", "What colour is the sky?",
             "How many legs has a cat?", "Name a fruit.", "What do bees make?", "Where is Rome?",
             "What is ice?", "Who was Nelson?", "What is a violin?", "Why is grass green?", "Name a river.",
             "What is two plus two?", "Who built the pyramids?", "What is bread?", "Name a colour."]
ANSWERS = ["Paris", "Jane Austen", "Blue", "Four", "An apple", "Honey", "In Italy", "Frozen water",
           "An admiral", "An instrument", "Chlorophyll", "The Thames", "Four", "The Egyptians", "Baked dough", "Red"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random CausalLM (tied embeddings) with a BPE tokenizer trained on the data's words."""
    text = " ".join(f"{q} {a}. Thank you. Go away." for q, a in zip(QUESTIONS, ANSWERS)) * 20
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=128, init_std=0.2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_align")
    CausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _pairs(qa):
    return [{"prompt": q, "chosen": f"{a}. Thank you.", "rejected": f"{a}. Go away."} for q, a in qa]


@pytest.fixture(scope="session")
def prefs(tmp_path_factory):
    """(train.jsonl, val.jsonl) preference files: 12 questions to train on, 4 held out."""
    folder = tmp_path_factory.mktemp("prefs")
    qa = list(zip(QUESTIONS, ANSWERS))
    for name, rows in (("train", _pairs(qa[:12])), ("val", _pairs(qa[12:]))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "train.jsonl", folder / "val.jsonl"
