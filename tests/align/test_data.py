"""Alignment data: readers name file, line and field for bad records; built-in sets; log-prob plumbing."""
from __future__ import annotations

import json

import pytest
import torch

from llmkit import CausalLM
from llmkit.align import RewardModel
from llmkit.align.builtin import EXAMPLE, arithmetic_reward, arithmetic_set
from llmkit.align.data import DataError, encode_pairs, read_kto, read_preferences, read_prompts
from llmkit.align.logps import completion_logps, reference_logps
from llmkit.align.objectives import last_token_lengths
from llmkit.data.sft import collate_preference
from llmkit.peft import apply_lora
from llmkit.peft.base import adapters
from llmkit.tokenizer import Tokenizer


def _write(tmp_path, *records, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}


@pytest.mark.parametrize("record,field,problem", [
    ({"prompt": "Hi?", "chosen": "Hello."}, "rejected", "is missing"),
    ({"prompt": "Hi?", "chosen": "  ", "rejected": "Go."}, "chosen", "is an empty completion"),
    ({"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}, "rejected", "equals chosen"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "is empty"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt[0]", "must be"),
    ({"prompt": "Hi?", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "chosen",
     "the last message must be the assistant's"),
    ({"prompt": "Hi?", "chosen": 3, "rejected": "b"}, "chosen", "must be a string"),
])
def test_bad_preference_records_name_file_line_and_field(tmp_path, record, field, problem):
    path = _write(tmp_path, GOOD, record)
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert str(e.value).startswith(f"{path}:2: field '{field}': {problem}")


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        read_preferences(_write(tmp_path, GOOD, "{oops"))
    with pytest.raises(FileNotFoundError):
        read_preferences(tmp_path / "none.jsonl")


def test_preference_layouts(tmp_path):
    conv = [{"role": "user", "content": "Hi?"}]
    implicit = {"chosen": conv + [{"role": "assistant", "content": "Hello."}],
                "rejected": conv + [{"role": "assistant", "content": "Go away."}]}
    recs = read_preferences(_write(tmp_path, GOOD, implicit, {**GOOD, "prompt": conv}))
    assert [r["prompt"] for r in recs] == [conv] * 3
    assert [(r["chosen"], r["rejected"]) for r in recs] == [("Hello.", "Go away.")] * 3
    assert recs[1]["where"].endswith("d.jsonl:2")


def test_kto_and_prompt_readers(tmp_path):
    path = _write(tmp_path, {"prompt": "a", "completion": "b", "label": True},
                  {"prompt": "a", "completion": "c", "label": "yes"})
    with pytest.raises(DataError, match=r":2: field 'label': must be true or false"):
        read_kto(path)
    with pytest.raises(DataError, match="KTO needs desirable and undesirable"):
        read_kto(_write(tmp_path, {"prompt": "a", "completion": "b", "label": True}, name="one.jsonl"))
    prompts = read_prompts(_write(tmp_path, {"prompt": "1+1?", "answer": 2}, {"prompt": "x"}, name="p.jsonl"))
    assert [p["answer"] for p in prompts] == ["2", None]


def test_a_prompt_longer_than_the_context_is_an_error(tiny_dir, tmp_path):
    tok = Tokenizer.from_pretrained(tiny_dir)
    path = _write(tmp_path, GOOD, {**GOOD, "prompt": "What is the capital of France? " * 20})
    with pytest.raises(DataError, match=rf"^{path}:2: field 'prompt': fills the whole context of 32"):
        encode_pairs(read_preferences(path), tok, 32)


def test_arithmetic_set_and_reward():
    train, val = arithmetic_set(50, "train"), arithmetic_set(20, "val")
    assert not {r["prompt"][-1]["content"] for r in train} & {r["prompt"][-1]["content"] for r in val}
    assert all(r["prompt"][:2] == EXAMPLE for r in train + val)  # the worked example in the answer format
    a, op, b = train[0]["prompt"][-1]["content"].split()[2:5]
    assert op == "+" and int(train[0]["answer"]) == int(a) + int(b[:-1])
    assert arithmetic_reward("12 + 3 = 15.\nAnswer: 15", "15") == pytest.approx(1.1)  # right, strict form
    assert arithmetic_reward("Answer: 14", "15") == pytest.approx(0.1)  # the form alone
    for lenient in ("12 + 3 = 15", "so \\boxed{15}", "It is 15.", "Answer: 16\nsorry, Answer: 15"):
        assert arithmetic_reward(lenient, "15") >= 1.0, lenient
    assert arithmetic_reward("12 + 3 = 15, no: Answer: 14", "15") == pytest.approx(0.1)  # the Answer line wins
    assert arithmetic_reward("fifteen", "15") == 0.0


# ----- log-probs -----
def test_completion_logps_and_reference_with_lora(tiny_dir):
    tok = Tokenizer.from_pretrained(tiny_dir)
    model = CausalLM.from_pretrained(tiny_dir).float()
    items = encode_pairs([{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": "Hello there.",
                           "rejected": "No.", "where": "x"}], tok, 64)
    x, y = collate_preference(items)
    lp = completion_logps(model, x, y)
    logits = model(x).log_softmax(-1)
    manual = [sum(logits[b, t, y[b, t]].item() for t in range(y.size(1)) if y[b, t] != -100) for b in range(2)]
    torch.testing.assert_close(lp.sum, torch.tensor(manual), rtol=1e-5, atol=1e-5)
    assert lp.lengths.tolist() == [(y[b] != -100).sum().item() for b in range(2)]
    base = lp.sum.detach()
    torch.manual_seed(0)
    apply_lora(model, "all-linear", r=4, alpha=8)
    for _, p in model.named_parameters():  # move the adapters off zero so policy != reference
        if p.requires_grad:
            p.data.normal_(0, 0.3)
    model.train()
    ref = reference_logps(model, x, y)
    assert not ref.tokens.requires_grad
    torch.testing.assert_close(ref.sum, base)
    assert not torch.allclose(completion_logps(model, x, y).sum, base)
    assert model.training and all(a.enabled for _, a in adapters(model))  # both restored


def test_reference_needs_adapters_or_a_model(tiny_dir):
    model = CausalLM.from_pretrained(tiny_dir)
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="no reference"):
        reference_logps(model, x, x)


def test_reward_model_scores_the_last_real_token(tiny_dir):
    torch.manual_seed(0)
    rm = RewardModel(CausalLM.from_pretrained(tiny_dir).float()).eval()
    ids = torch.randint(3, 100, (1, 6))
    alone = rm(ids, torch.tensor([6]))
    padded = rm(torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1), torch.tensor([6]))
    torch.testing.assert_close(alone, padded)  # right padding cannot reach the last real token
    assert rm(ids, torch.tensor([5])).item() != alone.item()
    y = torch.tensor([[-100, -100, 7, 8, -100, -100]])
    assert last_token_lengths(y).tolist() == [5]  # positions 0..4: the answer's last token (8) sits at 4
