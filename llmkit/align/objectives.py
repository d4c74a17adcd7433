"""The offline objectives: reward modelling, DPO (every loss type), ORPO, SimPO and KTO on tokenised batches.

Each turns a batch into the log-probs its loss function takes
(:mod:`llmkit.align.logps`) and logs what shows the method working: the loss,
implicit rewards of chosen and rejected answers, their margin and the share
of pairs ranked right. Preference batches are ``(x, y)`` with the chosen
answers in rows ``[:B]`` and the rejected in ``[B:]``
(:func:`llmkit.data.sft.collate_preference`), so one forward scores both.

Held-out evaluation reports two accuracies for the language-model methods:
``val_pref_acc``, the share of pairs where the policy gives the chosen answer
a higher *mean token* log-prob than the rejected one (defined before training
too, so before/after compare), and ``val_reward_acc``, the share where the
method's own reward ranks them right (0 before DPO training: its implicit
rewards all start at 0).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llmkit.align.data import join_completion
from llmkit.align.dpo import dpo_loss
from llmkit.align.kto import kto_loss
from llmkit.align.logps import CompletionLogps, completion_logps, reference_logps
from llmkit.align.orpo import orpo_loss
from llmkit.align.reward import reward_loss
from llmkit.align.simpo import simpo_loss
from llmkit.data.loader import IGNORE_INDEX


def _split(lp: CompletionLogps) -> tuple[CompletionLogps, CompletionLogps]:
    """Chosen rows, rejected rows."""
    (tc, tr), (mc, mr) = lp.tokens.chunk(2), lp.mask.chunk(2)
    return CompletionLogps(tc, mc), CompletionLogps(tr, mr)


def _pair_metrics(loss: Tensor, chosen: Tensor, rejected: Tensor, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}loss": loss.item(), f"{prefix}reward_chosen": chosen.mean().item(),
            f"{prefix}reward_rejected": rejected.mean().item(),
            f"{prefix}margin": (chosen - rejected).mean().item(),
            f"{prefix}reward_acc": (chosen > rejected).float().mean().item()}


def _mean_over(batches: Iterable[Any], fn, max_batches: int) -> dict[str, float]:
    """Item-weighted means of ``fn(batch) -> (metrics, items)`` over at most ``max_batches``, and ``val_n``."""
    totals: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        metrics, items = fn(batch)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * items
        n += items
    return {**{k: v / n for k, v in totals.items()}, "val_n": float(n)} if n else {}


@dataclass
class PreferenceObjective:
    """DPO (``loss_type``), ORPO or SimPO on preference pairs.

    Args:
        method: ``dpo``, ``orpo`` or ``simpo``.
        beta: the method's beta.
        loss_type: DPO's loss type.
        label_smoothing: DPO robust/exo_pair and SimPO.
        gamma: SimPO's margin.
        ref_model: DPO's frozen reference; None = the policy with adapters disabled.
        max_batches: held-out batches per evaluation.
    """

    method: str
    beta: float
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    gamma: float = 0.5
    ref_model: nn.Module | None = None
    max_batches: int = 20

    def _losses(self, model: nn.Module, batch) -> tuple[Tensor, Tensor, Tensor, CompletionLogps]:
        x, y = batch
        x, y = x.to(_device(model)), y.to(_device(model))
        pol = completion_logps(model, x, y)
        c, r = _split(pol)
        if self.method == "dpo":
            rc, rr = _split(reference_logps(model, x, y, self.ref_model))
            losses, cr, rj = dpo_loss(c.sum, r.sum, rc.sum, rr.sum, beta=self.beta, loss_type=self.loss_type,
                                      label_smoothing=self.label_smoothing, chosen_lengths=c.lengths,
                                      rejected_lengths=r.lengths)
            return losses.mean(), cr, rj, pol
        if self.method == "orpo":
            odds, _ = orpo_loss(c.mean, r.mean, beta=self.beta)
            nll = -c.tokens.sum() / c.mask.sum().clamp(min=1)  # the SFT term on chosen tokens, as TRL
            return nll + odds.mean(), self.beta * c.mean.detach(), self.beta * r.mean.detach(), pol
        if self.method == "simpo":
            losses = simpo_loss(c.mean, r.mean, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing)
            return losses.mean(), self.beta * c.mean.detach(), self.beta * r.mean.detach(), pol
        raise ValueError(f"PreferenceObjective: unknown method {self.method!r}")

    def loss(self, module: nn.Module, model: nn.Module, batch, step: int) -> tuple[Tensor, dict[str, float]]:
        loss, cr, rj, _ = self._losses(module, batch)
        metrics = _pair_metrics(loss, cr, rj)
        del metrics["loss"]  # the trainer logs the loss itself
        return loss, {**metrics, "tokens": batch[0].numel()}

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        def one(batch):
            loss, cr, rj, pol = self._losses(model, batch)
            c, r = _split(pol)
            metrics = {**_pair_metrics(loss, cr, rj, "val_"), "val_pref_acc": (c.mean > r.mean).float().mean().item()}
            return metrics, len(cr)
        return _mean_over(batches, one, self.max_batches)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def last_token_lengths(y: Tensor) -> Tensor:
    """(B,) for right-padded (x, y) rows: positions up to and including the one that has read the last answer token."""
    t = torch.arange(y.size(1), device=y.device)
    last = torch.where(y != IGNORE_INDEX, t, -1).amax(1)  # the last target position
    return (last + 2).clamp(max=y.size(1))  # the answer's last token sits one position after its target


@dataclass
class RewardObjective:
    """Bradley-Terry training of a :class:`~llmkit.align.reward.RewardModel` on preference pairs."""

    max_batches: int = 20

    def _scores(self, model: nn.Module, batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        x, y = x.to(_device(model)), y.to(_device(model))
        return model(x, last_token_lengths(y)).chunk(2)

    def loss(self, module: nn.Module, model: nn.Module, batch, step: int) -> tuple[Tensor, dict[str, float]]:
        c, r = self._scores(module, batch)
        loss = reward_loss(c, r).mean()
        metrics = _pair_metrics(loss, c.detach(), r.detach())
        del metrics["loss"]  # the trainer logs the loss itself
        return loss, {**metrics, "tokens": batch[0].numel()}

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        def one(batch):
            c, r = self._scores(model, batch)
            return _pair_metrics(reward_loss(c, r).mean(), c, r, "val_"), len(c)
        return _mean_over(batches, one, self.max_batches)


@dataclass
class KTOObjective:
    """KTO on labelled completions; the KL reference point from mismatched pairs.

    A batch is ``(x, y, labels, kl_x, kl_y)``: the examples, their labels (bool, (B,)), and the same
    prompts with the completions rotated by one (:func:`kto_collate`).
    """

    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    ref_model: nn.Module | None = None
    max_batches: int = 20

    def _losses(self, model: nn.Module, batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dev = _device(model)
        x, y, labels, kl_x, kl_y = (t.to(dev) for t in batch)
        pol = completion_logps(model, x, y).sum
        with torch.no_grad():
            kl_pol = completion_logps(model, kl_x, kl_y).sum
        ref = reference_logps(model, x, y, self.ref_model).sum
        kl_ref = reference_logps(model, kl_x, kl_y, self.ref_model).sum
        losses, cr, rj, kl = kto_loss(pol[labels], pol[~labels], kl_pol, ref[labels], ref[~labels], kl_ref,
                                      beta=self.beta, desirable_weight=self.desirable_weight,
                                      undesirable_weight=self.undesirable_weight)
        return losses.mean(), cr, rj, kl

    def loss(self, module: nn.Module, model: nn.Module, batch, step: int) -> tuple[Tensor, dict[str, float]]:
        loss, cr, rj, kl = self._losses(module, batch)
        return loss, {"reward_chosen": _mean(cr), "reward_rejected": _mean(rj), "kl": kl.item(),
                      "tokens": batch[0].numel() + batch[3].numel()}

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        def one(batch):
            loss, cr, rj, kl = self._losses(model, batch)
            return {"val_loss": loss.item(), "val_reward_chosen": _mean(cr), "val_reward_rejected": _mean(rj),
                    "val_kl": kl.item()}, len(batch[2])
        return _mean_over(batches, one, self.max_batches)


def _mean(t: Tensor) -> float:
    return t.mean().item() if t.numel() else 0.0


def kto_collate(items: list[tuple[list[int], list[int], bool]], max_len: int, pad_id: int = 0):
    """``(x, y, labels, kl_x, kl_y)``: the batch, and each prompt with the next example's completion.

    Items are ``(prompt_ids, completion_ids, label)`` (:func:`~llmkit.align.data.encode_kto`); the
    mismatched pairs pair prompt ``i`` with completion ``i + 1`` (cyclically), as TRL's KL dataset does.
    """
    from llmkit.data.sft import collate

    x, y = collate([join_completion(p, c, max_len) for p, c, _ in items], pad_id)
    n = len(items)
    kl_x, kl_y = collate([join_completion(items[i][0], items[(i + 1) % n][1], max_len) for i in range(n)], pad_id)
    return x, y, torch.tensor([lab for _, _, lab in items]), kl_x, kl_y
