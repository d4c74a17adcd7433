"""The objectives that sample from the policy: GRPO, and distillation with GKD's on-policy mix.

GRPO: sample a group of completions per prompt, score them, and take one clipped step.

Each micro-batch of prompts is rolled out with plain :func:`llmkit.generate.generate`
(``group_size`` samples per prompt at ``temperature``, seeded from the step so
a resumed run samples the same completions), scored by ``reward_fn(record,
text)``, and turned into group-relative advantages. One optimisation step per
rollout, so the "old" policy is the current one and the ratio starts at 1
(the clipping then only matters with gradient accumulation across rollouts).
The KL to the reference (k3, per token) is logged whether or not ``beta``
puts it in the loss, so a run shows how far it moved.

Held-out evaluation answers each prompt greedily and reports the mean reward
and the share of completions with full reward (``val_accuracy``, an answer
judged correct), over ``val_n`` prompts.

Distillation (:class:`DistillObjective`) matches the student's token
distributions to a teacher's on completions from the data or, with
probability ``lmbda``, sampled by the student; held-out it reports the
divergence and the student's own perplexity on the data's completions.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.align.data import encode_prompt, join_completion
from llmkit.align.distill import gkd_on_policy, jsd_loss
from llmkit.align.grpo import grpo_advantages, grpo_loss, k3_kl
from llmkit.align.logps import completion_logps, has_adapters, reference_logps
from llmkit.align.ops import masked_mean, token_logps
from llmkit.data.loader import IGNORE_INDEX
from llmkit.data.sft import collate
from llmkit.generate import SamplingParams, generate

RewardFn = Callable[[dict[str, Any], str], float]


def sample(model: nn.Module, tokenizer, records: list[dict[str, Any]], *, n: int, max_new_tokens: int,
           temperature: float, seed: int | None) -> tuple[list[str], list[list[int]]]:
    """``n`` completions (texts, token ids) per record, in record order, generated in eval mode."""
    was_training = model.training
    model.eval()
    try:
        sampling = SamplingParams(temperature=temperature) if temperature > 0 else None
        result = generate(model, tokenizer, [r["prompt"] for r in records for _ in range(n)], sampling=sampling,
                          max_new_tokens=max_new_tokens, seed=seed)
        return result.texts, result.token_ids
    finally:
        model.clear_caches()  # the Trainer's forward runs uncached
        model.train(was_training)


@dataclass
class GRPOObjective:
    """GRPO on prompt records with a verifiable ``reward_fn``; see the module docstring."""

    tokenizer: Any
    reward_fn: RewardFn
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    seq_len: int = 256
    seed: int = 0
    ref_model: nn.Module | None = None
    max_batches: int = 20
    correct: float = 1.0  # a reward at least this counts as a correct answer

    def loss(self, module: nn.Module, model: nn.Module, batch: list[dict[str, Any]],
             step: int) -> tuple[Tensor, dict[str, float]]:
        texts, ids = sample(model, self.tokenizer, batch, n=self.group_size, max_new_tokens=self.max_new_tokens,
                            temperature=self.temperature, seed=self.seed * 1_000_003 + step)
        records = [r for r in batch for _ in range(self.group_size)]
        rewards = torch.tensor([self.reward_fn(r, t) for r, t in zip(records, texts)], dtype=torch.float32)
        advantages = grpo_advantages(rewards, self.group_size, scale_rewards=self.scale_rewards)
        prompts = [encode_prompt(self.tokenizer, r, self.seq_len) for r in records]
        x, y = collate([join_completion(p, c, self.seq_len) for p, c in zip(prompts, ids)],
                       self.tokenizer.pad_id or 0)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        pol = completion_logps(module, x, y)
        has_ref = self.ref_model is not None or has_adapters(model)
        ref = reference_logps(model, x, y, self.ref_model) if has_ref else None
        loss = grpo_loss(pol.tokens, None, ref.tokens if ref is not None else None, advantages.to(device), pol.mask,
                         epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, beta=self.beta,
                         loss_type=self.loss_type, max_completion_length=self.max_new_tokens)
        metrics = {"reward": rewards.mean().item(), "accuracy": (rewards >= self.correct).float().mean().item(),
                   "completion_len": float(sum(map(len, ids)) / len(ids)),
                   "reward_std": rewards.view(-1, self.group_size).std(1).mean().item(), "tokens": x.numel()}
        if ref is not None:
            metrics["kl"] = masked_mean(k3_kl(pol.tokens.detach(), ref.tokens), pol.mask).item()
        return loss, metrics

    def evaluate(self, model: nn.Module, batches: Iterable[list[dict[str, Any]]]) -> dict[str, float]:
        rewards = []
        for i, batch in enumerate(batches):
            if i >= self.max_batches:
                break
            texts, _ = sample(model, self.tokenizer, batch, n=1, max_new_tokens=self.max_new_tokens,
                              temperature=0.0, seed=None)
            rewards += [self.reward_fn(r, t) for r, t in zip(batch, texts)]
        if not rewards:
            return {}
        r = torch.tensor(rewards)
        return {"val_reward": r.mean().item(), "val_accuracy": (r >= self.correct).float().mean().item(),
                "val_n": float(len(rewards))}


@dataclass
class DistillObjective:
    """Distillation from ``teacher`` on (prompt, completion) items, GKD-style.

    With probability ``lmbda`` a step trains on completions the student samples itself (on-policy,
    Agarwal et al., 2024), otherwise on the dataset's; either way the loss is :func:`jsd_loss` between
    the student's and the teacher's next-token distributions on the completion tokens (``beta`` 0 =
    forward KL, i.e. classic KD; 1 = reverse KL).
    """

    teacher: nn.Module
    tokenizer: Any
    beta: float = 0.0
    temperature: float = 1.0
    lmbda: float = 0.0
    max_new_tokens: int = 32
    seq_len: int = 256
    seed: int = 0
    max_batches: int = 20

    def _batch(self, model: nn.Module, items: list[tuple[Any, ...]], step: int) -> tuple[Tensor, Tensor]:
        prompts = [p for p, _, _ in items]
        completions = [c for _, c, _ in items]
        if step >= 0 and gkd_on_policy(self.lmbda, random.Random(self.seed * 1_000_003 + step)):
            _, completions = sample(model, self.tokenizer, [{"prompt": m} for _, _, m in items], n=1,
                                    max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                    seed=self.seed * 1_000_003 + step)
        x, y = collate([join_completion(p, c, self.seq_len) for p, c in zip(prompts, completions)],
                       self.tokenizer.pad_id or 0)
        device = next(model.parameters()).device
        return x.to(device), y.to(device)

    def _losses(self, module: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mask = (y != IGNORE_INDEX).to(torch.float32)
        student = module(x)
        with torch.no_grad():
            teacher = self.teacher(x)
        loss = jsd_loss(student, teacher, mask, beta=self.beta, temperature=self.temperature)
        nll = -masked_mean(token_logps(student, y.masked_fill(mask == 0, 0)), mask)
        return loss, nll

    def loss(self, module: nn.Module, model: nn.Module, batch, step: int) -> tuple[Tensor, dict[str, float]]:
        x, y = self._batch(model, batch, step)
        loss, nll = self._losses(module, x, y)
        return loss, {"nll": nll.item(), "tokens": x.numel()}

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        total, nll, n = 0.0, 0.0, 0
        for i, batch in enumerate(batches):
            if i >= self.max_batches:
                break
            loss, batch_nll = self._losses(model, *self._batch(model, batch, -1))
            total, nll, n = total + loss.item() * len(batch), nll + batch_nll.item() * len(batch), n + len(batch)
        if not n:
            return {}
        return {"val_loss": total / n, "val_nll": nll / n, "val_ppl": math.exp(min(nll / n, 700.0)), "val_n": float(n)}
