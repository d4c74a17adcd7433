"""Best-of-n / rejection sampling: sample n answers per prompt, keep the best as an SFT set.

For each prompt the policy samples ``n`` completions; each is scored by a
verifier (the prompt's ``answer``, as :func:`~llmkit.align.builtin.arithmetic_reward`
checks it), by a reward model trained with ``llmkit align reward`` (its
``out_dir``) or by an LLM judge (:mod:`llmkit.align.judge`); the best-scoring one is kept when it scores at least
``min_score``. The kept conversations are written as ``best_of_n.jsonl``
(``{"messages": [...]}``), which ``llmkit finetune --data`` trains on: the
rejection-sampling fine-tuning loop (Llama 2's RS, STaR/ReST with a verifier).
The report compares the mean score of one sample per prompt with the mean of
the best of ``n``: the gain a fine-tune on the kept set can at most distil.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit.align.builtin import arithmetic_reward
from llmkit.align.data import encode_prompt, join_completion
from llmkit.align.judge import Judge, grade
from llmkit.align.objectives import last_token_lengths
from llmkit.align.online import sample
from llmkit.align.reward import RewardModel
from llmkit.data.conversations import write_conversations
from llmkit.data.sft import collate
from llmkit.generate import load_model_and_tokenizer
from llmkit.io.pull import resolve_model
from llmkit.peft import apply_lora


def load_reward_model(run_dir: str | Path) -> RewardModel:
    """The reward model an ``llmkit align reward`` run wrote to ``run_dir`` (its base, LoRA shape and weights)."""
    run_dir = Path(run_dir)
    weights, report = run_dir / "reward_model.safetensors", run_dir / "align.json"
    if not weights.is_file() or not report.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished `llmkit align reward` run (no {weights.name} or "
                                f"{report.name})")
    cfg = json.loads(report.read_text())["config"]
    model, _ = load_model_and_tokenizer(resolve_model(cfg["model"]))
    rm = RewardModel(model.float())
    if cfg["peft"] == "lora":
        apply_lora(rm, "all-linear", cfg["r"], cfg["alpha"], cfg["lora_dropout"])
    return rm.load(weights).eval()


Scorer = Callable[[list[dict[str, Any]], list[str], list[list[int]]], list[float]]  # (records, texts, ids)


def verifier_scores(records: list[dict[str, Any]], texts: list[str], ids: list[list[int]]) -> list[float]:
    """:func:`~llmkit.align.builtin.arithmetic_reward` of each text against its record's ``answer``."""
    return [arithmetic_reward(t, r["answer"]) for r, t in zip(records, texts)]


def reward_model_scorer(rm: nn.Module, tokenizer, max_len: int) -> Scorer:
    """Scores under a :class:`RewardModel` of each (prompt, completion ids)."""
    @torch.no_grad()
    def score(records: list[dict[str, Any]], texts: list[str], ids: list[list[int]]) -> list[float]:
        rows = [join_completion(encode_prompt(tokenizer, r, max_len), c, max_len) for r, c in zip(records, ids)]
        x, y = collate(rows, tokenizer.pad_id or 0)
        return rm(x, last_token_lengths(y)).tolist()
    return score


def judge_scorer(judge_model: Judge) -> Scorer:
    """Grades by an LLM judge (:func:`~llmkit.align.judge.grade`, 1..5) of each answer to its last user turn."""
    def score(records: list[dict[str, Any]], texts: list[str], ids: list[list[int]]) -> list[float]:
        return [grade(judge_model, r["prompt"][-1]["content"], t) for r, t in zip(records, texts)]
    return score


def best_of_n(model: nn.Module, tokenizer, records: list[dict[str, Any]], out_dir: str | Path, *, n: int = 4,
              max_new_tokens: int = 64, temperature: float = 1.0, batch_size: int = 8, seed: int = 0,
              scorer: Scorer | None = None, min_score: float | None = None) -> dict[str, Any]:
    """Sample, score, keep the best; writes ``out_dir/best_of_n.jsonl`` and returns the summary.

    Args:
        model: the policy (eval mode is set while sampling).
        tokenizer: its tokenizer.
        records: prompt records (:func:`~llmkit.align.data.read_prompts`); with the verifier each needs
            an ``answer``.
        out_dir: where ``best_of_n.jsonl`` goes.
        n: samples per prompt.
        max_new_tokens: tokens per sample at most.
        temperature: sampling temperature.
        batch_size: prompts sampled together.
        seed: sampling seed (batch ``i`` uses ``seed + i``).
        scorer: how samples are scored: :func:`verifier_scores` (None), :func:`reward_model_scorer`,
            :func:`judge_scorer` or any ``(records, texts, ids) -> scores``.
        min_score: keep a prompt's best only at or above this; None: the verifier's full reward (1.0), or
            every best under another scorer.
    """
    if scorer is None and any(r.get("answer") is None for r in records):
        missing = next(r for r in records if r.get("answer") is None)
        raise ValueError(f"{missing['where']}: field 'answer': is missing; the verifier needs it "
                         "(or give a reward model)")
    threshold = min_score if min_score is not None else (1.0 if scorer is None else float("-inf"))
    scorer = scorer or verifier_scores
    kept, first, best = [], [], []
    for i in range(0, len(records), batch_size):
        batch = records[i:i + batch_size]
        texts, ids = sample(model, tokenizer, batch, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=seed + i)
        scores = scorer([r for r in batch for _ in range(n)], texts, ids)
        for j, rec in enumerate(batch):
            group = scores[j * n:(j + 1) * n]
            k = max(range(n), key=group.__getitem__)
            first.append(group[0])
            best.append(group[k])
            if group[k] >= threshold:
                kept.append(rec["prompt"] + [{"role": "assistant", "content": texts[j * n + k]}])
    path = write_conversations(Path(out_dir) / "best_of_n.jsonl", kept)
    summary = {"prompts": len(records), "n": n, "kept": len(kept), "mean_score_first": sum(first) / len(first),
               "mean_score_best": sum(best) / len(best), "output": str(path)}
    (Path(out_dir) / "best_of_n.json").write_text(json.dumps(summary, indent=2))
    return summary
