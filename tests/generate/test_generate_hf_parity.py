"""Token-for-token parity with transformers' generate: greedy and beam search, tiny random Llama and SmolLM2."""
import itertools

import pytest
import torch

from llmkit.generate import generate, generate_tokens

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _prompts(b, t, vocab, seed):
    ids = torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if b > 1:  # left-pad every row but the last by a different amount
        for row in range(b - 1):
            mask[row, : 2 + row] = 0
            ids[row, : 2 + row] = 0
    return ids, mask


def _assert_same(hf_out, prompt_len, ours, fill):
    """transformers' rows equal ours followed by ``fill`` padding (it pads rows that finished early)."""
    for row, got in zip(hf_out[:, prompt_len:].tolist(), ours):
        assert row[:len(got)] == got and set(row[len(got):]) <= {fill}, (row, got)


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_matches_transformers_on_a_tiny_llama(tiny_hf, batch):
    hf, ours = tiny_hf
    ids, mask = _prompts(batch, 8, hf.config.vocab_size, seed=batch)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                           eos_token_id=2)
    got = generate_tokens(ours, ids, mask, max_new_tokens=24, stop_ids=[2])
    _assert_same(expected, 8, got.token_ids, 0)


BEAM_CASES = list(itertools.product([2, 4], [1.0, 0.0, -0.7, 2.0], [False, True, "never"]))


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", BEAM_CASES)
def test_beam_search_matches_transformers_on_a_tiny_llama(tiny_hf, num_beams, length_penalty, early_stopping):
    hf, ours = tiny_hf
    stopped = 0
    for seed, n_eos in [(0, 1), (1, 3)]:
        ids, mask = _prompts(2, 6, hf.config.vocab_size, seed)
        # stop ids taken from the unstopped best hypotheses, so that hypotheses do finish early
        free = generate_tokens(ours, ids, mask, max_new_tokens=6, num_beams=num_beams).token_ids
        eos = list(dict.fromkeys([free[0][2], free[1][3], free[0][4]]))[:n_eos]
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=num_beams,
                               length_penalty=length_penalty, early_stopping=early_stopping, pad_token_id=0,
                               eos_token_id=eos)
        got = generate_tokens(ours, ids, mask, max_new_tokens=10, num_beams=num_beams, length_penalty=length_penalty,
                              early_stopping=early_stopping, stop_ids=eos)
        # transformers fills beam output with eos[0] when pad_token_id is 0 (falsy)
        _assert_same(expected, 6, got.token_ids, eos[0])
        stopped += sum(r == "stop" for r in got.finish_reasons)
    if length_penalty <= 1:  # (a large length penalty prefers the hypotheses that never stopped)
        assert stopped


def test_beam_search_with_repetition_penalty_matches_transformers(tiny_hf):
    hf, ours = tiny_hf
    from llmkit.generate import SamplingParams

    ids, mask = _prompts(2, 6, hf.config.vocab_size, 3)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=3,
                           repetition_penalty=1.4, pad_token_id=9, eos_token_id=2)
    got = generate_tokens(ours, ids, mask, max_new_tokens=10, num_beams=3, stop_ids=[2],
                          sampling=SamplingParams(repetition_penalty=1.4))
    _assert_same(expected, 6, got.token_ids, 9)


def test_greedy_matches_transformers_on_smollm2(smollm2, smollm2_hf):
    model, tok = smollm2
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Name three colours of the rainbow, briefly."}]]
    ours = generate(model, tok, prompts, max_new_tokens=24)
    rows = [tok.apply_chat_template(p, tokenize=True) for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    for i, r in enumerate(rows):  # single prompt
        single = smollm2_hf.generate(torch.tensor([r]), max_new_tokens=24, do_sample=False)
        assert single[0, len(r):].tolist() == ours.token_ids[i]
    batch = smollm2_hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    _assert_same(batch, width, ours.token_ids, tok.pad_id)
    assert "Paris" in ours.texts[0]


@pytest.mark.slow
def test_beam_search_matches_transformers_on_smollm2(smollm2, smollm2_hf):
    model, tok = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea."}], tokenize=True)
    expected = smollm2_hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, num_beams=3)
    got = generate_tokens(model, torch.tensor([ids]), max_new_tokens=20, num_beams=3, stop_ids=[tok.eos_id])
    _assert_same(expected, len(ids), got.token_ids, tok.eos_id)
