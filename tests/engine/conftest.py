"""Fixtures for engine tests: a tiny random model with a small tokenizer, workloads, and the naive reference."""
from __future__ import annotations

import random

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import generate_tokens
from llmkit.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    text = ("Hello world. The quick brown fox jumps over the lazy dog. END of story.\n" * 20
            + "Emoji 🤗 and café, naïve, 日本語.\n" * 5)
    return Tokenizer.train([text], vocab_size=300, min_frequency=2)


def tiny_model(tokenizer: Tokenizer, **overrides) -> CausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
               max_seq_len=512, init_std=0.2)
    return CausalLM(ModelConfig(**{**cfg, **overrides})).eval()


@pytest.fixture(scope="session")
def tiny(tokenizer) -> CausalLM:
    return tiny_model(tokenizer)


def workload(vocab: int, n: int = 32, max_prompt: int = 300, max_out: int = 40, seed: int = 0,
             shared_prefix: int = 40) -> list[tuple[list[int], int, int]]:
    """(prompt ids, max tokens, arrival step) per request: lengths 1..max_prompt, half sharing a prefix."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(shared_prefix)]
    out = []
    for i in range(n):
        length = 1 if i == 0 else max_prompt if i == 1 else rng.randint(1, max_prompt)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        if i % 2 and length > shared_prefix:
            ids[:shared_prefix] = prefix
        out.append((ids, rng.randint(1, max_out), rng.randint(0, 12)))
    return out


def naive(model: CausalLM, prompt: list[int], max_tokens: int, stop_ids) -> list[int]:
    """Plain greedy ``llmkit.generate`` of one prompt: the reference the engine must match."""
    return generate_tokens(model, torch.tensor([prompt]), max_new_tokens=max_tokens, stop_ids=stop_ids).token_ids[0]


def run_arrivals(engine, requests, params_of) -> dict[str, list[int]]:
    """Feed ``requests`` to ``engine`` at their arrival steps, step until done; token ids per request id."""
    results, step = {}, 0
    pending = sorted(range(len(requests)), key=lambda i: requests[i][2])
    while pending or engine.has_unfinished_requests():
        while pending and requests[pending[0]][2] <= step:
            i = pending.pop(0)
            engine.add_request(str(i), requests[i][0], params_of(i))
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.outputs[0].token_ids
        step += 1
        assert step < 10_000, "the engine does not finish"
    return results
