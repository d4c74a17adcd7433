"""SFT label masking, padding, and the preference dataset, with a byte-level chat tokenizer."""
from __future__ import annotations

import pytest
import torch

from llmkit.data.loader import IGNORE_INDEX
from llmkit.data.sft import PreferenceDataset, SFTDataset, collate, collate_preference

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name?"},
        {"role": "assistant", "content": "Kit"}]


def targets(y: torch.Tensor) -> bytes:
    """The supervised target tokens that are bytes, as a string."""
    return bytes(t for t in y.tolist() if 0 <= t < 256)


def test_sft_targets_only_assistant_tokens(chat_tokenizer):
    ids, mask = chat_tokenizer.apply_chat_template(CONV, add_generation_prompt=False, tokenize=True,
                                                   assistant_mask=True)
    (x, y), = SFTDataset([CONV], chat_tokenizer, max_len=1024)
    assert torch.equal(x, torch.tensor(ids[:-1])) and len(y) == len(x)
    assert ids[-1] == chat_tokenizer.END  # no open assistant header after the final reply
    assert targets(y) == b"HelloKit"
    supervised = y != IGNORE_INDEX
    assert torch.equal(y[supervised], torch.tensor(ids[1:])[supervised])
    assert int(supervised.sum()) == sum(mask[1:]) == len("Hello") + len("Kit") + 2  # + two END tokens


def test_sft_truncation_and_skipping(chat_tokenizer):
    long_question = [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "answer"}]
    ds = SFTDataset([CONV, long_question], chat_tokenizer, max_len=30)
    assert len(ds) == 1 and ds.skipped == 1  # the long question leaves no answer inside 30 tokens
    # CONV's 31st token is the "K" of the second reply: the last target of a 30-token x
    assert len(ds[0][0]) == 30 and targets(ds[0][1]) == b"HelloK"


def test_collate_pads_right(chat_tokenizer):
    a = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ds = SFTDataset([a, CONV], chat_tokenizer, max_len=1024)
    x, y = collate([ds[0], ds[1]], pad_id=7)
    n = len(ds[0][0])
    assert x.shape == y.shape == (2, len(ds[1][0]))
    assert torch.equal(x[0, :n], ds[0][0]) and torch.all(x[0, n:] == 7) and torch.all(y[0, n:] == IGNORE_INDEX)
    assert torch.equal(x[1], ds[1][0]) and torch.equal(y[1], ds[1][1])


def test_preference_dataset_masks_prompt_and_earlier_turns(chat_tokenizer):
    examples = [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon, I think"},
                {"prompt": CONV[:4], "chosen": "Kit", "rejected": "No"}]
    ds = PreferenceDataset(examples, chat_tokenizer, max_len=1024)
    assert len(ds) == 2
    assert targets(ds[0]["chosen"][1]) == b"Paris" and targets(ds[0]["rejected"][1]) == b"Lyon, I think"
    assert targets(ds[1]["chosen"][1]) == b"Kit"  # the earlier "Hello" reply is part of the prompt
    x, y = collate_preference([ds[0], ds[1]])
    assert x.shape[0] == 4
    chosen_x, rejected_x = x.chunk(2)
    assert torch.equal(chosen_x[0, :len(ds[0]["chosen"][0])], ds[0]["chosen"][0])
    assert torch.equal(rejected_x[1, :len(ds[1]["rejected"][0])], ds[1]["rejected"][0])
    assert targets(y[2]) == b"Lyon, I think"


def test_preference_dataset_skips_truncated_replies(chat_tokenizer):
    examples = [{"prompt": "q" * 40, "chosen": "yes", "rejected": "no"}]
    ds = PreferenceDataset(examples, chat_tokenizer, max_len=20)
    assert len(ds) == 0 and ds.skipped == 1


def test_sft_with_the_llmkit_tokenizer():
    import llmkit.tokenizer as tokenizer_module
    tok = tokenizer_module.Tokenizer.train(["Hello there. General Kenobi!"] * 20, vocab_size=300)
    conv = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "General Kenobi!"}]
    (x, y), = SFTDataset([conv], tok, max_len=256)
    reply = tok.decode([t for t in y.tolist() if t != IGNORE_INDEX])
    assert reply.startswith("General Kenobi!") and "Hello" not in reply
