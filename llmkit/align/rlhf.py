"""PPO for RLHF as an alignment objective: rollouts, a value head on the policy, GAE, clipped updates.

One rollout per ``ppo_epochs`` optimizer steps: each prompt of the micro-batch
is answered once (plain :func:`llmkit.generate.generate`, seeded from the step,
so a resumed run samples the same completions) and scored by ``score_fn`` (a
reward model, a verifier or any function). The sequence score plus a per-token
KL penalty ``-kl_coef * (log pi - log pi_ref)`` are the rewards
(:func:`~llmkit.align.ppo.kl_penalty_rewards`); GAE over the value head's
estimates gives advantages (whitened over the batch) and returns. The next
``ppo_epochs`` steps each take one clipped step on that rollout (policy
surrogate + ``vf_coef`` * clipped value loss - ``ent_coef`` * entropy), so
from the second step on the ratio differs from 1 and the clipping bites.
After each rollout :class:`~llmkit.align.ppo.AdaptiveKLController` moves
``kl_coef`` towards the KL target.

The value head (:class:`ValueHead`) is a scalar linear layer on the policy's
final normed hidden states, attached to the policy as ``value_head`` (a
second backbone as critic would double memory and forward passes; sharing
the LoRA-adapted backbone is what OpenRLHF/TRL call a shared critic). The
hidden states are read with a forward hook on the final norm during the one
policy forward, so the model code is untouched. ``value_head`` is part of
the model's state dict, so the Trainer checkpoints it with the optimizer; it
also holds ``kl_coef`` as a buffer, so the controller survives a resume and
a resumed run is bit-identical. A rollout buffer is not checkpointed, so
``save_every`` must be a multiple of ``ppo_epochs`` (checked in the config).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.align.data import encode_prompt, join_completion
from llmkit.align.grpo import k3_kl
from llmkit.align.logps import has_adapters, reference_logps
from llmkit.align.online import sample
from llmkit.align.ops import masked_mean, masked_sum, token_logps
from llmkit.align.ppo import (AdaptiveKLController, entropy_bonus, gae, kl_penalty_rewards, ppo_policy_loss,
                              ppo_value_loss)
from llmkit.data.loader import IGNORE_INDEX
from llmkit.data.sft import collate

Scorer = Callable[[list[dict[str, Any]], list[str], list[list[int]]], list[float]]  # (records, texts, ids)


class ValueHead(nn.Module):
    """``V(s_t)`` from the hidden state (B, T, dim) -> (B, T); holds the adaptive ``kl_coef`` as a buffer.

    Args:
        dim: the backbone's hidden size.
        kl_coef: the starting KL coefficient (float64, so a resume restores it exactly).
    """

    def __init__(self, dim: int, kl_coef: float):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)  # V = 0 at the start: the first advantages are the plain returns
        nn.init.zeros_(self.score.bias)
        self.register_buffer("kl_coef", torch.tensor(kl_coef, dtype=torch.float64))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)


def attach_value_head(model: nn.Module, kl_coef: float) -> nn.Module:
    """Give ``model`` (a CausalLM, maybe with adapters) a trainable ``value_head``; returns ``model``."""
    model.value_head = ValueHead(model.cfg.dim, kl_coef).to(next(model.parameters()).device)
    return model


def policy_forward(module: nn.Module, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One policy forward: ``(token logps (B, T), values (B, T), logits (B, T, V), mask (B, T))``.

    ``module`` runs the forward (maybe DDP-wrapped), ``model`` is the bare model whose final norm is hooked.
    """
    captured: list[Tensor] = []
    handle = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = module(x)
    finally:
        handle.remove()
    mask = y != IGNORE_INDEX
    tokens = token_logps(logits, y.masked_fill(~mask, 0))
    mask = mask.to(tokens.dtype)
    return tokens * mask, model.value_head(captured[-1]) * mask, logits, mask


def whiten(values: Tensor, mask: Tensor) -> Tensor:
    """Masked ``(values - mean) / std`` over the batch (PPO's advantage normalisation)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


@dataclass
class Rollout:
    """What one rollout leaves for its ``ppo_epochs`` updates (all detached)."""

    x: Tensor
    y: Tensor
    old_logps: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    metrics: dict[str, float]


@dataclass
class PPOObjective:
    """PPO on prompt records scored by ``score_fn``; see the module docstring."""

    tokenizer: Any
    score_fn: Scorer
    max_new_tokens: int = 32
    temperature: float = 1.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    discount: float = 1.0
    lam: float = 0.95
    kl_target: float = 6.0
    kl_horizon: int = 10000
    ppo_epochs: int = 1
    seq_len: int = 256
    seed: int = 0
    ref_model: nn.Module | None = None
    max_batches: int = 20
    _rollouts: dict[int, Rollout] = field(default_factory=dict, repr=False)
    _calls: tuple[int, int] = (-1, 0)  # (step, micro-batches seen in it)

    def _rollout(self, model: nn.Module, batch: list[dict[str, Any]], seed: int) -> Rollout:
        texts, ids = sample(model, self.tokenizer, batch, n=1, max_new_tokens=self.max_new_tokens,
                            temperature=self.temperature, seed=seed)
        scores = torch.tensor(self.score_fn(batch, texts, ids), dtype=torch.float32)
        prompts = [encode_prompt(self.tokenizer, r, self.seq_len) for r in batch]
        x, y = collate([join_completion(p, c, self.seq_len) for p, c in zip(prompts, ids)],
                       self.tokenizer.pad_id or 0)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            old_logps, old_values, _, mask = policy_forward(model, model, x, y)
            has_ref = self.ref_model is not None or has_adapters(model)
            ref = reference_logps(model, x, y, self.ref_model).tokens if has_ref else old_logps
            head = model.value_head
            rewards = kl_penalty_rewards(scores.to(device), old_logps, ref, mask, head.kl_coef.item())
            advantages, returns = gae(rewards, old_values, mask, gamma=self.discount, lam=self.lam)
            advantages = whiten(advantages, mask)
            kl = masked_sum(old_logps - ref, mask, 1).mean().item()  # nats per sequence, as the controller wants
            controller = AdaptiveKLController(head.kl_coef.item(), self.kl_target, self.kl_horizon)
            metrics = {"reward": scores.mean().item(), "kl": kl,
                       "kl_k3": masked_mean(k3_kl(old_logps, ref), mask).item(), "kl_coef": head.kl_coef.item(),
                       "completion_len": float(sum(map(len, ids)) / len(ids))}
            head.kl_coef.fill_(controller.update(kl, len(batch)))
        return Rollout(x, y, old_logps, old_values, advantages, returns, metrics)

    def loss(self, module: nn.Module, model: nn.Module, batch: list[dict[str, Any]],
             step: int) -> tuple[Tensor, dict[str, float]]:
        micro = self._calls[1] if self._calls[0] == step else 0
        self._calls = (step, micro + 1)
        first = step - step % self.ppo_epochs  # the step whose rollout this step trains on
        if step == first or micro not in self._rollouts:
            if step != first:
                raise RuntimeError(f"PPO step {step}: its rollout (step {first}) is gone; resume only from a "
                                   "checkpoint at a multiple of ppo_epochs")
            self._rollouts[micro] = self._rollout(model, batch, self.seed * 1_000_003 + step * 997 + micro)
        r = self._rollouts[micro]
        logps, values, logits, mask = policy_forward(module, model, r.x, r.y)
        pg, clip_frac = ppo_policy_loss(logps, r.old_logps, r.advantages, mask, clip=self.cliprange)
        vf = ppo_value_loss(values, r.old_values, r.returns, mask, clip=self.cliprange_value)
        entropy = entropy_bonus(logits, mask)
        loss = pg + self.vf_coef * vf - self.ent_coef * entropy
        metrics = {**r.metrics, "policy_loss": pg.item(), "value_loss": vf.item(), "entropy": entropy.item(),
                   "clip_frac": clip_frac.item(), "tokens": r.x.numel()}
        return loss, metrics

    def evaluate(self, model: nn.Module, batches: Iterable[list[dict[str, Any]]]) -> dict[str, float]:
        """Greedy answers to the held-out prompts: their mean score (``val_reward``)."""
        scores = []
        for i, batch in enumerate(batches):
            if i >= self.max_batches:
                break
            texts, ids = sample(model, self.tokenizer, batch, n=1, max_new_tokens=self.max_new_tokens,
                                temperature=0.0, seed=None)
            scores += self.score_fn(batch, texts, ids)
        return {"val_reward": sum(scores) / len(scores), "val_n": float(len(scores))} if scores else {}
