"""`AlignTrainer`: the Trainer's loop, checkpoints and resume, with an alignment objective instead of next-token loss.

:class:`~llmkit.train.Trainer` owns everything around a step: the schedule,
accumulation and gradient sync, clipping, mixed precision, metrics,
checkpoints (with the loader position and RNG states, so a resumed run is
bit-identical) and the export. This subclass replaces only what a step
computes: each micro-batch goes to an :class:`Objective`, which returns the
loss and the numbers to log, and evaluation asks the objective too. Micro-
batch losses are averaged (each objective's loss is already a mean over its
pairs, prompts or tokens).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from llmkit.train import Trainer
from llmkit.train import distributed
from llmkit.train.precision import autocast
from llmkit.train.schedule import lr_at


class Objective(Protocol):
    """What a method supplies to :class:`AlignTrainer`."""

    def loss(self, module: nn.Module, model: nn.Module, batch: Any, step: int) -> tuple[Tensor, dict[str, float]]:
        """The loss of one micro-batch and its metrics, among them ``tokens`` (positions run through the model);
        ``module`` runs forward/backward (maybe DDP-wrapped), ``model`` is the bare model (for generation);
        ``step`` seeds anything random."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """Held-out metrics (no gradients)."""
        ...


class AlignTrainer(Trainer):
    """A :class:`~llmkit.train.Trainer` whose step and evaluation are ``objective``'s.

    Args:
        objective: the method.
        val_batches: returns a fresh iterable of held-out batches; None = no evaluation.
        *args, **kwargs: as for :class:`~llmkit.train.Trainer` (``cfg``, ``model``, ``data``, ``resume``).
    """

    def __init__(self, objective: Objective, *args, val_batches: Callable[[], Iterable[Any]] | None = None, **kwargs):
        self.objective, self.val_batches = objective, val_batches
        super().__init__(*args, **kwargs)

    def train_step(self) -> dict[str, float]:
        cfg, d = self.cfg, self.d
        start = time.perf_counter()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        tokens = 0
        for i in range(cfg.grad_accum):
            batch = next(self.data.train)
            with distributed.grad_sync(self.module, sync=i == cfg.grad_accum - 1):
                with autocast(d.device, cfg.dtype):
                    loss, metrics = self.objective.loss(self.module, self.model, batch, self.step)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            tokens += int(metrics.pop("tokens"))
            for k, v in {"loss": loss.item(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = self._apply_gradients()
        self.step += 1
        self.tokens += tokens
        seconds = time.perf_counter() - start
        return {"step": self.step, **sums, "lr": lr, "grad_norm": float(grad_norm), "tok_per_s": tokens / seconds,
                "tokens": self.tokens, "step_s": seconds}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_batches is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.d.device, self.cfg.dtype):
                return self.objective.evaluate(self.model, self.val_batches())
        finally:
            self.model.train(was_training)
