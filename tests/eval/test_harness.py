"""The lm-eval-harness adapter: lm_eval runs local task files on an llmkit model and gets the numbers a
direct computation gives (multiple choice, rolling log-likelihood, greedy generation)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.eval.conftest import TEXT

lm_eval = pytest.importorskip("lm_eval")
harness = pytest.importorskip("llmkit.eval.harness")  # registers --model llmkit
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

QUESTIONS = [
    {"question": "It is a truth universally", "choices": ["acknowledged", "denied", "a"], "answer": 0},
    {"question": "a single man in possession of a good", "choices": ["fortune", "wife", "neighbourhood"], "answer": 0},
    {"question": "must be in want of a", "choices": ["wife", "neighbourhood", "man"], "answer": 0},
    {"question": "However little known the", "choices": ["feelings", "views", "x"], "answer": 1},
    {"question": "this truth is so well fixed in the minds of the", "choices": ["surrounding families", "man"],
     "answer": 0},
]
DOCS = [{"text": TEXT[:90]}, {"text": TEXT[90:180]}]  # each under the 64-token context


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A folder with a multiple-choice and a rolling-perplexity task over local JSON-lines files."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    (root / "mc.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    common = f"dataset_path: json\ntest_split: test\n"

    def kwargs(name):
        return f"dataset_kwargs:\n  data_files:\n    test: {root / name}\n  cache_dir: {root / 'hf_cache'}\n"

    (root / "mc.yaml").write_text(
        f"task: llmkit_mc\n{common}{kwargs('mc.jsonl')}output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "rolling.yaml").write_text(
        f"task: llmkit_rolling\n{common}{kwargs('docs.jsonl')}output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n")
    return root


@pytest.fixture(scope="module")
def lm(checkpoint):
    return harness.LlmkitLM(pretrained=str(checkpoint), batch_size=4)


def test_simple_evaluate_matches_direct(lm, tasks, tiny):
    from llmkit.eval.multiple_choice import evaluate_choices, read_questions

    out = lm_eval.simple_evaluate(model=lm, tasks=["llmkit_mc", "llmkit_rolling"],
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    mc, rolling = out["results"]["llmkit_mc"], out["results"]["llmkit_rolling"]
    direct = evaluate_choices(*tiny, read_questions(tasks / "mc.jsonl"))
    assert mc["acc,none"] == pytest.approx(direct.acc) and mc["acc_norm,none"] == pytest.approx(direct.acc_norm)
    assert mc["acc_stderr,none"] == pytest.approx(direct.acc_stderr)
    # bits per byte of the documents: each fits the context, so one forward after the EOS prefix
    model, tok = tiny
    nll, n_bytes = 0.0, 0
    for doc in DOCS:
        ids = torch.tensor([[tok.eos_id] + tok.encode(doc["text"], add_special_tokens=False)])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids)[0, :-1].float(), -1)
        nll -= float(logprobs.gather(-1, ids[0, 1:, None]).sum())
        n_bytes += len(doc["text"].encode())
    assert rolling["bits_per_byte,none"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)


def test_rolling_beyond_the_context(lm, tiny):
    """A document longer than the context is scored in lm_eval's disjoint windows: every token once."""
    from lm_eval.utils import get_rolling_token_windows

    model, tok = tiny
    text = TEXT * 3
    ids = tok.encode(text, add_special_tokens=False)
    windows = list(get_rolling_token_windows(ids, tok.eos_id, 64, 1))
    assert len(windows) > 2 and sum(len(w[1]) for w in windows) == len(ids)
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    expected = 0.0
    for inputs, targets in windows:  # lm_eval's window: the model reads inputs; its last logits predict targets
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([inputs]))[0].float(), -1)[-len(targets):]
        expected += float(logprobs.gather(-1, torch.tensor(targets)[:, None]).sum())
    assert total == pytest.approx(expected, rel=1e-5)


def test_matches_lm_evals_hf_backend(lm, checkpoint):
    """lm_eval's own transformers backend on the same checkpoint returns the same numbers and text, also for
    an empty context, a context ending in whitespace (where a token merges across the boundary) and a
    pair longer than the context (cut from the left)."""
    pytest.importorskip("transformers")
    from lm_eval.models.huggingface import HFLM

    ref = HFLM(pretrained=str(checkpoint), device="cpu", batch_size=2, dtype="float32")
    pairs = [("It is a truth ", "universally"), ("", "hello world"), ("in want of a", " wife"), (TEXT * 2, " end")]
    requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    for (got, greedy), (expected, expected_greedy) in zip(lm.loglikelihood(requests), ref.loglikelihood(requests)):
        assert got == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy
    rolling = [Instance("loglikelihood_rolling", {}, (TEXT * 3,), 0)]
    assert lm.loglikelihood_rolling(rolling) == pytest.approx(ref.loglikelihood_rolling(rolling), rel=1e-6)
    gen = [Instance("generate_until", {}, ("It is a truth", {"until": ["."], "max_gen_toks": 6}), 0)]
    assert lm.generate_until(gen) == ref.generate_until(gen)


def test_generate_until_is_greedy_generate(lm, tiny):
    from llmkit.generate import generate

    model, tok = tiny
    prompts = ["It is a truth", "a single man in possession"]
    requests = [Instance("generate_until", {}, (p, {"until": ["."], "max_gen_toks": 6}), i)
                for i, p in enumerate(prompts)]
    got = lm.generate_until(requests)
    expected = [t.split(".")[0] for t in generate(model, tok, prompts, max_new_tokens=6, stop=["."]).texts]
    assert got == expected


def test_registered_for_the_command_line(checkpoint):
    """``--model llmkit --model_args pretrained=...`` resolves and builds the adapter the way lm_eval's CLI
    does (its default --device cuda falls back to the CPU here). The full command line,
    ``python -m llmkit.eval.harness --model llmkit ...``, is left out of the suite: lm_eval indexes its
    thousands of built-in task files first, ~40 s."""
    from lm_eval.api.registry import get_model

    cls = get_model("llmkit")
    assert cls is harness.LlmkitLM
    lm = cls.create_from_arg_string(f"pretrained={checkpoint},dtype=float32", {"batch_size": 2, "device": "cuda"})
    assert lm.batch_size == 2 and lm.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_declared_as_an_lm_eval_plugin():
    """lm_eval after 0.4.13 registers each ``lm_eval.models`` entry point as a lazy placeholder in its model
    registry; ours must resolve, through lm_eval's own Registry, to the adapter."""
    from importlib.metadata import entry_points

    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry

    (ep,) = [e for e in entry_points(group="lm_eval.models") if e.name == "llmkit"]
    registry = Registry("model", base_cls=LM)
    registry.register("llmkit", target=ep)
    assert registry.get("llmkit") is harness.LlmkitLM
