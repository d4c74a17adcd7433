"""`Trainer`: the training loop for pretraining and SFT, single-process or under torchrun.

One optimizer step is: set the learning rate from the schedule, draw
``grad_accum`` micro-batches, forward/backward each (gradient sync only on the
last), unscale and clip, step, zero. Everything around it -- evaluation,
metrics, plots, checkpoints -- happens between steps on a fixed cadence.

Loss normalisation. Each micro-batch's summed token loss is divided by the
number of target tokens in the *whole* global step (all micro-batches, all
ranks; counted before the first forward) and multiplied by the world size,
which DDP/FSDP's gradient averaging divides back out. So the gradient is
exactly the mean over every target token of the step, however the tokens
are split into micro-batches and ranks -- which matters with ``-100``
targets (SFT), where per-micro-batch means would weight short and long
batches alike. The MoE load-balancing loss is averaged over micro-batches.

Reproducibility. A fresh run seeds Python, NumPy and torch with ``seed``,
builds the model (identical on every rank), then reseeds with
``seed + rank`` so dropout differs across ranks. A resumed run rebuilds
everything the same way, loads weights, optimizer moments, the loader
position and loss-scaler state, and restores each rank's RNG state last, so
on CPU in fp32 it reaches bit-identical weights to a run never stopped.

Sequence parallelism. With ``sequence_parallel="ring" | "ulysses"`` under
torchrun the ranks split every sequence instead of the batch: each reads the
same batches, keeps its contiguous chunk of every sequence (right-padded to a
multiple of the world size with ``-100`` targets, which causal attention
never looks back at), runs the model with its chunk's global position ids
while every layer's attention spans all chunks (:mod:`llmkit.parallel`, over
a process group of its own so its traffic never interleaves with DDP's), and
counts only its chunk's targets. The normalisation above then makes the
DDP/FSDP-averaged gradient the single-process gradient of the whole batch.
Weights stay replicated (DDP) or sharded (FSDP); activation memory per rank
falls with the world size. The MoE load-balancing loss is computed per chunk,
so for MoE models it is not the single-process one.

Time limits. ``fit(time_limit=seconds)`` sizes a WSD run to the clock: until
the decay begins, the rates do not depend on ``max_steps``, so it is
re-estimated after every step from the measured step time, and the run ends
near the limit with a full decay, even when the machine's speed changes
during the run (the speedrun's budget on a shared laptop).

Stopping. SIGINT (Ctrl-C) or SIGTERM lets the current step finish, then a
checkpoint is saved and :meth:`Trainer.fit` returns ``interrupted=True``; a
second Ctrl-C aborts at once. A ``kill -9`` loses the steps since the last
checkpoint, because checkpoints are written atomically.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from llmkit.io.atomic import atomic_dir
from llmkit.io.errors import CheckpointError
from llmkit.model import CausalLM
from llmkit.parallel import check_sequence_parallel, chunk_positions, sequence_parallel, shard_batch
from llmkit.peft.base import adapters
from llmkit.peft.format import save_adapter
from llmkit.train import activation_checkpoint, distributed
from llmkit.train.checkpoint import (Checkpoint, capture_rng, checkpoint_path, latest_checkpoint, list_checkpoints,
                                     load_checkpoint, prune_checkpoints, restore_rng, save_checkpoint)
from llmkit.train.config import TrainConfig, check_resume
from llmkit.train.data import Data, build_data
from llmkit.train.evaluate import IGNORE_INDEX, evaluate
from llmkit.train.metrics import MetricsLog, plot_curves
from llmkit.train.model import build_model, model_config
from llmkit.train.optim import build_optimizer, freeze
from llmkit.train.precision import autocast, check_precision, grad_scaler
from llmkit.train.schedule import decay_start, lr_at, refit_wsd

TIMED_STEPS = 3  # steps timed before a time limit first re-fits max_steps


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class GracefulStop:
    """While active, the first SIGINT/SIGTERM only sets :attr:`requested`; a second SIGINT raises KeyboardInterrupt.

    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nllmkit train: {signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(Ctrl-C again to abort without saving)", flush=True)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class FitResult:
    """How :meth:`Trainer.fit` ended."""

    step: int
    interrupted: bool
    last: dict[str, float] = field(default_factory=dict)  # the last training record
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation


class Trainer:
    """Trains a CausalLM as ``cfg`` says.

    Args:
        cfg: the run.
        model: use this model instead of building ``cfg.model`` (tests, notebooks).
        data: use these batches instead of building them from ``cfg.data``; its train loader must be
            this rank's shard.
        resume: continue from the newest checkpoint in ``cfg.out_dir``; ``cfg`` must equal the saved
            config except for a larger ``max_steps``. Without it, an ``out_dir`` that already holds
            checkpoints is refused, so nothing is overwritten by accident.

    Raises:
        CheckpointError: resuming from a corrupt or mismatched checkpoint (nothing is written).
        ValueError: a bad config, or checkpoints in ``out_dir`` without ``resume``.
    """

    def __init__(self, cfg: TrainConfig, model: CausalLM | None = None, data: Data | None = None,
                 resume: bool = False):
        self.cfg = cfg = cfg.validate()
        self.out = Path(cfg.out_dir)
        ckpt = self._find_checkpoint(resume)
        self.d = d = distributed.init(cfg.device)
        check_precision(d.device, cfg.dtype)

        mcfg = model.cfg if model is not None else model_config(cfg)
        self.data = data if data is not None else build_data(cfg, mcfg.vocab_size, d)
        seed_all(cfg.seed)
        self.model = model if model is not None else build_model(cfg, mcfg, self.data.tokenizer)
        frozen = freeze(self.model, cfg.freeze)
        if frozen and d.is_main:
            print(f"llmkit train: froze {len(frozen)} parameter tensors ({', '.join(frozen[:3])}"
                  f"{' ...' if len(frozen) > 3 else ''})")
        if cfg.qat:
            from llmkit.quant import prepare_qat

            options = {"group_size": cfg.qat_group_size} if cfg.qat == "int4" else {}
            prepare_qat(self.model, cfg.qat, **options)  # same parameters and names: checkpoints and the optimizer are unchanged
        self.sp_group = None  # the group every sequence is split over; None = the ranks split the batch
        if cfg.sequence_parallel != "none" and d.enabled:
            check_sequence_parallel(self.model.cfg, cfg.sequence_parallel, d.world_size)
            self.sp_group = dist.new_group()
        self.model.to(d.device).train()
        if cfg.grad_checkpointing:
            activation_checkpoint.enable(self.model)
        self.module = distributed.wrap(self.model, cfg.parallel, d)  # what forward/backward runs through
        if cfg.compile:
            self.module = torch.compile(self.module)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = grad_scaler(d.device, cfg.dtype)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        seed_all(cfg.seed + d.rank)

        self.step, self.tokens, self.saved_step = 0, 0, -1
        if ckpt is not None:
            self._restore(ckpt)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.step if ckpt else None) if d.is_main else None
        self._plot = cfg.plot

    # ----- checkpoints -----
    def _find_checkpoint(self, resume: bool) -> Checkpoint | None:
        if not resume:
            existing = list_checkpoints(self.out)
            if existing:
                raise ValueError(f"{self.out} already holds checkpoints (newest: step {existing[-1][0]}); "
                                 f"resume with --resume {self.out}, or choose another out_dir")
            return None
        path = latest_checkpoint(self.out)
        if path is None:
            raise CheckpointError(f"nothing to resume: no checkpoint in {self.out / 'checkpoints'}")
        ckpt = load_checkpoint(path)
        try:
            check_resume(TrainConfig.from_dict(ckpt.state["train_config"]), self.cfg.to_dict())
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        return ckpt

    def _restore(self, ckpt: Checkpoint) -> None:
        """Load a verified checkpoint into the freshly built model, optimizer, loader and RNGs."""
        st, where = ckpt.state, ckpt.path
        if st["world_size"] != self.d.world_size:
            raise CheckpointError(f"{where} was written by {st['world_size']} process(es); "
                                  f"resume with the same number (now {self.d.world_size})")
        mine = self.model.cfg.to_dict()
        diff = [k for k in mine if st["model_config"].get(k) != mine[k]]
        if diff:
            raise CheckpointError(f"{where} holds a different model: " + ", ".join(
                f"{k} {st['model_config'].get(k)!r} (now {mine[k]!r})" for k in diff))
        model_state = ckpt.model_state
        if self.model.cfg.tie_word_embeddings:
            model_state["lm_head.weight"] = model_state["model.embed_tokens.weight"]
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        bad = sorted(set(expected) ^ set(model_state)) + [
            k for k in expected if k in model_state and tuple(model_state[k].shape) != expected[k]]
        if bad:
            raise CheckpointError(f"{where}: model tensors do not match the model: {', '.join(bad[:8])}")
        groups = self._named_param_groups()
        saved_groups = [g["params"] for g in st["optimizer_groups"]]
        if [g["params"] for g in groups] != saved_groups or set(ckpt.optim_state) - {n for g in saved_groups for n in g}:
            raise CheckpointError(f"{where}: optimizer state does not match the trainable parameters")
        distributed.load_full_state_dicts(self.model, self.optimizer, model_state,
                                          {"state": ckpt.optim_state, "param_groups": groups})
        try:
            self.data.train.load_state_dict(st["loader"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: data loader position does not fit this data: {e}") from None
        if st["scaler"]:
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.tokens, self.saved_step = st["step"], st["tokens"], st["step"]
        restore_rng(ckpt.rng_states[self.d.rank])
        if self.d.is_main:
            print(f"llmkit train: resumed from {where} at step {self.step}")

    def _named_param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups with parameters given by name (the checkpoint layout)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                for g in self.optimizer.param_groups]

    def save(self) -> Path:
        """Write a checkpoint of the current step (a collective: every rank calls it; rank 0 writes)."""
        model_state, optim_state = distributed.full_state_dicts(self.model, self.optimizer)
        rng_states = distributed.gather_objects(capture_rng(), self.d)
        path = checkpoint_path(self.out, self.step)
        if self.d.is_main:
            state = {"step": self.step, "tokens": self.tokens, "world_size": self.d.world_size,
                     "train_config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                     "loader": self.data.train.state_dict(), "scaler": self.scaler.state_dict()}
            save_checkpoint(path, self.model.cfg, model_state, optim_state, rng_states, state)
            prune_checkpoints(self.out, self.cfg.keep_last)
        distributed.barrier(self.d)
        self.saved_step = self.step
        return path

    def _export(self, checkpoint: Path) -> Path:
        """Write the finished model where a loader takes it (rank 0), to ``cfg.export_dir`` or ``out_dir/model``.

        A model with adapters exports them alone in peft's format (load with
        :func:`llmkit.peft.load_adapter` on the base model); any other model exports the
        checkpoint's weights (with ``qat``: the model quantised by that scheme) and the tokenizer as an
        HF directory.
        """
        target = Path(self.cfg.export_dir) if self.cfg.export_dir else self.out / "model"
        if any(True for _ in adapters(self.model)):
            save_adapter(self.model, target)  # TypeError for adapters peft's format cannot hold
            return target
        with atomic_dir(target) as tmp:
            if self.cfg.qat:  # the model the fake-quantised training aimed at
                from llmkit.quant import convert_qat

                convert_qat(copy.deepcopy(self.model).cpu()).save_pretrained(tmp)
            else:
                for f in checkpoint.iterdir():
                    if f.name == "config.json" or f.name.startswith("model"):
                        shutil.copy2(f, tmp / f.name)
            if self.data.tokenizer is not None:
                self.data.tokenizer.save_pretrained(tmp)
        return target

    # ----- one step -----
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its training record."""
        cfg, d = self.cfg, self.d
        start = time.perf_counter()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [self._local(*next(self.data.train)) for _ in range(cfg.grad_accum)]
        count = torch.tensor([float(sum(int((y != IGNORE_INDEX).sum()) for _, y in micro))], device=d.device)
        targets = max(distributed.all_reduce_sum(count, d).item(), 1.0)
        nats_total = torch.zeros((), device=d.device)
        aux_coef = self.model.cfg.router_aux_loss_coef if self.model.cfg.n_experts else 0.0
        for i, (x, y) in enumerate(micro):
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            with distributed.grad_sync(self.module, sync=i == len(micro) - 1), self._sequence_parallel():
                with autocast(d.device, cfg.dtype):
                    logits, aux = self.module(x, **self._positions(x), return_aux_loss=True)
                nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="sum")
                loss = nats * (d.world_size / targets)
                if aux_coef:
                    loss = loss + aux_coef * aux / len(micro)
                self.scaler.scale(loss).backward()
            nats_total += nats.detach()
        grad_norm = self._apply_gradients()
        loss_value = distributed.all_reduce_sum(nats_total, d).item() / targets
        step_tokens = sum(x.numel() for x, _ in micro) * d.world_size
        self.step += 1
        self.tokens += step_tokens
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                "tok_per_s": step_tokens / (time.perf_counter() - start), "tokens": self.tokens}

    def _local(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a batch's (x, y): all of it, or its chunk of every sequence."""
        return (x, y) if self.sp_group is None else shard_batch(x, y, self.sp_group, IGNORE_INDEX)

    def _positions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward keywords for this rank's inputs ``x`` (B, T): none (positions from 0), or its chunk's global
        ``position_ids`` (a keyword only then, since prefix/prompt-tuned wrappers do not take it)."""
        return {} if self.sp_group is None else {"position_ids": chunk_positions(x, self.sp_group)}

    def _sequence_parallel(self) -> contextlib.AbstractContextManager:
        """Context in which the model's attention spans every rank's chunk (nothing without sequence parallelism)."""
        if self.sp_group is None:
            return contextlib.nullcontext()
        return sequence_parallel(self.model, self.cfg.sequence_parallel, self.sp_group)

    def _apply_gradients(self) -> torch.Tensor:
        """Unscale, clip, step the optimizer and zero the gradients; the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip or math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def evaluate(self) -> dict[str, float]:
        """Validation metrics now (empty without validation data)."""
        if self.data.val is None:
            return {}
        with self._sequence_parallel():
            return evaluate(self.model, (self._local(x, y) for x, y in self.data.val()), self.cfg.eval_batches,
                            self.d, autocast(self.d.device, self.cfg.dtype), self.data.bytes_per_token,
                            lambda x: self.model(x, **self._positions(x)))

    # ----- the loop -----
    def fit(self, time_limit: float | None = None, min_steps: int = 0) -> FitResult:
        """Train to ``max_steps`` (or until interrupted), evaluating, logging and checkpointing on the way.

        Args:
            time_limit: seconds to train for, needing ``schedule="wsd"``. Until the decay begins,
                ``max_steps`` is re-estimated after every step from the mean time per step so far
                (:func:`~llmkit.train.schedule.refit_wsd`), so the run ends near the limit and still
                decays fully, and no step already taken changes its learning rate. ``cfg.max_steps``
                is the most it may grow to; ``self.cfg`` and the checkpoints hold the re-fitted value.
                The final evaluation, checkpoint and export come after the limit.
            min_steps: with ``time_limit``, train at least this many steps (in all) however slow they are.
        """
        if time_limit is not None and self.cfg.schedule != "wsd":
            raise ValueError(f"a time limit needs schedule='wsd' (got {self.cfg.schedule!r}): only WSD's rates "
                             "before its decay do not depend on max_steps")
        cfg, d = self.cfg, self.d
        result = FitResult(self.step, interrupted=False)
        start, first, most = time.perf_counter(), self.step, cfg.max_steps
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not d.is_main, dynamic_ncols=True)
        try:
            with GracefulStop() as stop:
                while self.step < self.cfg.max_steps:
                    record = result.last = self.train_step()
                    if time_limit is not None:
                        self._fit_to_time(time_limit, time.perf_counter() - start, self.step - first, min_steps, most)
                        bar.total = self.cfg.max_steps
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tok_per_s']:.0f}",
                                    lr=f"{record['lr']:.2e}")
                    last = self.step == self.cfg.max_steps
                    if self.metrics and (self.step % cfg.log_every == 0 or last):
                        self.metrics.write(record)
                    if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                        result.eval = self._evaluate_and_log(bar)
                    if last or (cfg.save_every and self.step % cfg.save_every == 0):
                        self.save()
                    if distributed.any_rank(stop.requested, d):
                        result.interrupted = True
                        break
        finally:
            bar.close()
        if self.saved_step != self.step:
            self.save()
        result.step = self.step
        if d.is_main:
            self._draw()
            if not result.interrupted:
                try:
                    exported = self._export(checkpoint_path(self.out, self.step))
                    print(f"llmkit train: step {self.step}: model written to {exported}")
                except TypeError as e:  # the checkpoint holds the model all the same
                    print(f"llmkit train: step {self.step}: not exported ({e}); the checkpoint holds the model")
            else:
                print(f"llmkit train: stopped at step {self.step}; checkpoint in {checkpoint_path(self.out, self.step)}")
        distributed.barrier(d)
        return result

    def _fit_to_time(self, time_limit: float, elapsed: float, done: int, fewest: int, most: int) -> None:
        """Re-fit ``max_steps`` so the steps left fill the time left, ``done`` steps having taken ``elapsed`` s."""
        cfg = self.cfg
        if done < TIMED_STEPS or self.step >= decay_start(cfg.max_steps, cfg.warmup_steps, cfg.decay_fraction):
            return
        # every rank must choose the same length, so all use the mean of their clocks
        elapsed = distributed.all_reduce_sum(torch.tensor([elapsed], dtype=torch.float64, device=self.d.device),
                                             self.d).item() / self.d.world_size
        wanted = self.step + int(max(time_limit - elapsed, 0.0) / max(elapsed / done, 1e-9))
        self.cfg = replace(cfg, max_steps=refit_wsd(cfg, self.step, min(max(wanted, fewest), most)))

    def _evaluate_and_log(self, bar: tqdm) -> dict[str, float]:
        metrics = self.evaluate()
        if metrics and self.metrics:
            self.metrics.write({"step": self.step, **metrics})
            bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "val_tokens"))
            self._draw()
        return metrics

    def _draw(self) -> None:
        if self._plot and self.metrics:
            self._plot = plot_curves(self.metrics.read(), self.out / "curves.png")

    def close(self) -> None:
        """Leave the process group (under torchrun).

        The DDP wrapper is released first: its reducer talks to the process group, and
        destroying it after the group is gone can hang.
        """
        self.module = self.model
        gc.collect()
        distributed.shutdown(self.d)
