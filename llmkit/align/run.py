"""An alignment run: load, attach LoRA, build data and the method's objective, train, evaluate, report.

Steps of :func:`align`:

1. the policy and tokenizer from ``model`` (any name :func:`~llmkit.io.pull.resolve_model`
   takes); for ``reward`` the LM head becomes a scalar head (:class:`RewardModel`);
2. ``peft=lora``: LoRA on every linear layer; the reference (DPO, KTO, GRPO's KL)
   is the same model with the adapters off. ``peft=none``: all weights train and
   the reference is a frozen copy;
3. the data (a file or a built-in set) and its held-out split, tokenised up
   front so bad records fail before any training (file, line, field);
4. an :class:`~llmkit.align.trainer.AlignTrainer` over the method's objective:
   held-out metrics before, training (checkpoints in ``out_dir/train``; the
   same command with ``--resume`` continues exactly), held-out metrics after;
5. ``out_dir``: ``adapter/`` (LoRA, peft's format: loads in ``llmkit chat``/``generate``
   with the base model) or ``model/``; ``reward_model.safetensors`` for
   ``reward``; ``curves.png``, ``report.md`` and ``align.json``.
"""
from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit.align.best_of_n import Scorer, best_of_n, load_reward_model, reward_model_scorer, verifier_scores
from llmkit.align.builtin import PREFERENCE_SETS, arithmetic_reward, arithmetic_set, preference_set
from llmkit.align.config import AlignConfig
from llmkit.align.data import (DataError, encode_completions, encode_kto, encode_pairs, read_kto, read_preferences,
                               read_prompts)
from llmkit.align.objectives import KTOObjective, PreferenceObjective, RewardObjective, kto_collate
from llmkit.align.online import DistillObjective, GRPOObjective, RewardFn, sample
from llmkit.align.report import plot_align_curves, write_report
from llmkit.align.reward import RewardModel
from llmkit.align.rlhf import PPOObjective, attach_value_head
from llmkit.align.trainer import AlignTrainer
from llmkit.data import read_conversations
from llmkit.data.chat import CHAT_SETS, load_chat_set
from llmkit.data.sft import collate_preference
from llmkit.generate import load_model_and_tokenizer
from llmkit.io import resolve_config
from llmkit.io.pull import resolve_model
from llmkit.model import CausalLM
from llmkit.peft import apply_lora
from llmkit.train import Data, TrainConfig
from llmkit.train.checkpoint import latest_checkpoint
from llmkit.train.data import ConversationBatches

VAL_PROMPTS = 64  # held-out arithmetic problems
HOLD_OUT = 0.1  # share of a data file held out when no val_data is given


@dataclass
class Records:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    source: str


def load_records(cfg: AlignConfig) -> Records:
    """Training and held-out records for ``cfg.method`` from ``cfg.data`` / ``cfg.val_data`` or a built-in set."""
    name = cfg.data_name
    if cfg.method == "distill" and name in CHAT_SETS:
        return Records(*(_completions(load_chat_set(name, split), f"{name}/{split}") for split in ("train", "val")),
                       name)
    if cfg.method in ("ppo", "grpo", "best-of-n") and name == "arithmetic":
        return Records(arithmetic_set(cfg.n_prompts, "train", seed=cfg.seed),
                       arithmetic_set(VAL_PROMPTS, "val", seed=cfg.seed), name)
    if name in PREFERENCE_SETS:
        train, val = preference_set(name, "train", cfg.seed), preference_set(name, "val", cfg.seed)
        if cfg.val_data:
            val = read_preferences(cfg.val_data)
        if cfg.method == "kto":  # unpaired: each pair gives one desirable and one undesirable example
            train, val = _unpair(train), _unpair(val)
        return Records(train, val, name)
    readers = {"distill": lambda path: _completions(read_conversations(path), str(path)), "kto": read_kto,
               "ppo": read_prompts, "grpo": read_prompts, "best-of-n": read_prompts}
    reader = readers.get(cfg.method, read_preferences)
    train = reader(name)
    if cfg.val_data:
        return Records(train, reader(cfg.val_data), name)
    n_val = max(1, int(len(train) * HOLD_OUT))
    return Records(train[:-n_val], train[-n_val:], name)


def _completions(conversations: list[list[dict[str, str]]], source: str) -> list[dict[str, Any]]:
    """Distillation records: each conversation's last message is the completion, the rest the prompt."""
    for i, c in enumerate(conversations):
        if len(c) < 2 or c[-1].get("role") != "assistant" or not c[-1].get("content", "").strip():
            raise DataError(f"{source}:{i + 1}: field 'messages': must be a prompt then a non-empty assistant reply")
    return [{"prompt": c[:-1], "completion": c[-1]["content"], "where": f"{source}:{i + 1}"}
            for i, c in enumerate(conversations)]


def _unpair(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO examples from pairs: the chosen answer of even pairs (desirable), the rejected of odd ones."""
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"],
             "label": i % 2 == 0, "where": p["where"]} for i, p in enumerate(pairs)]


def build_policy(cfg: AlignConfig, tokenizer: Any = None) -> tuple[nn.Module, Any, Path | str]:
    """(model with LoRA if asked, tokenizer, resolved source); fp32 on the CPU.

    ``tokenizer`` (distillation: the teacher's) lets ``cfg.model`` be a preset, built from a random init
    with that tokenizer's vocabulary.
    """
    torch.manual_seed(cfg.seed)
    if tokenizer is not None and resolve_config(cfg.model).weights is None:
        mcfg = resolve_config(cfg.model).config
        ids = {"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
               "pad_token_id": tokenizer.pad_id}
        model, source = CausalLM(mcfg.replace(**{k: v for k, v in ids.items() if v is not None})), cfg.model
    else:
        source = resolve_model(cfg.model)
        model, own = load_model_and_tokenizer(source)
        tokenizer = tokenizer or own
    model = model.float()
    if cfg.method == "reward":
        model = RewardModel(model)
    if cfg.peft == "lora":
        model = apply_lora(model, "all-linear", cfg.r, cfg.alpha, cfg.lora_dropout)
        if cfg.method == "reward":
            model.score.requires_grad_(True)  # the new head trains in full
    if cfg.method == "ppo":
        attach_value_head(model, cfg.method_beta)  # after LoRA: the head trains in full
    return model, tokenizer, source


def build_objective(cfg: AlignConfig, model: nn.Module, tokenizer, reward_fn: RewardFn | None = None,
                    teacher: nn.Module | None = None) -> Any:
    """The method's objective; a frozen copy of the starting model is the reference when there is no LoRA.

    ``reward_fn(record, text)`` scores GRPO's completions; default: :func:`arithmetic_reward` against the
    record's ``answer``.
    """
    needs_ref = cfg.method in ("dpo", "kto", "ppo", "grpo")
    ref = copy.deepcopy(model).eval().requires_grad_(False) if needs_ref and cfg.peft == "none" else None
    beta = cfg.method_beta
    if cfg.method == "reward":
        return RewardObjective(cfg.eval_batches)
    if cfg.method == "distill":
        return DistillObjective(teacher, tokenizer, beta, cfg.temperature, cfg.lmbda, cfg.max_new_tokens, cfg.seq_len,
                                cfg.seed, cfg.eval_batches)
    if cfg.method in ("dpo", "orpo", "simpo"):
        return PreferenceObjective(cfg.method, beta, cfg.loss_type, cfg.label_smoothing, cfg.gamma, ref,
                                   cfg.eval_batches)
    if cfg.method == "kto":
        return KTOObjective(beta, cfg.desirable_weight, cfg.undesirable_weight, ref, cfg.eval_batches)
    if cfg.method == "ppo":
        return PPOObjective(tokenizer, ppo_scorer(cfg, model, tokenizer, reward_fn), cfg.max_new_tokens,
                            cfg.temperature, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef, cfg.ent_coef,
                            cfg.discount, cfg.lam, cfg.kl_target, cfg.kl_horizon, cfg.ppo_epochs, cfg.seq_len, cfg.seed, ref,
                            cfg.eval_batches)
    reward_fn = reward_fn or (lambda rec, text: arithmetic_reward(text, rec["answer"] or ""))
    return GRPOObjective(tokenizer, reward_fn, cfg.group_size,
                         cfg.max_new_tokens, cfg.temperature, beta, cfg.epsilon_low, cfg.epsilon_high,
                         cfg.grpo_loss_type, cfg.scale_rewards, cfg.seq_len, cfg.seed, ref, cfg.eval_batches)


def ppo_scorer(cfg: AlignConfig, model: nn.Module, tokenizer, reward_fn: RewardFn | None) -> Scorer:
    """PPO's sequence scores: ``reward_fn``, else the reward model of ``cfg.reward_model``, else the verifier."""
    if reward_fn is not None:
        return lambda records, texts, ids: [reward_fn(r, t) for r, t in zip(records, texts)]
    if not cfg.reward_model:
        return verifier_scores
    rm = load_reward_model(cfg.reward_model)
    if rm.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"--reward_model {cfg.reward_model}: vocabulary {rm.cfg.vocab_size} != the policy's "
                         f"{model.cfg.vocab_size}; the reward model must share the policy's tokenizer")
    return reward_model_scorer(rm, tokenizer, cfg.seq_len)


def build_data(cfg: AlignConfig, records: Records, tokenizer) -> tuple[Data, list[Any]]:
    """(the Trainer's data, the held-out batches)."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    bs = cfg.batch_size
    if cfg.method in ("ppo", "grpo"):
        items, val = records.train, records.val
        collate = list
    elif cfg.method == "distill":  # (prompt ids, completion ids, prompt messages) for on-policy sampling
        items, val = ([(p, c, r["prompt"]) for (p, c), r in zip(encode_completions(rs, tokenizer, cfg.seq_len), rs)]
                      for rs in (records.train, records.val))
        collate = list
    elif cfg.method == "kto":
        items, val = (encode_kto(r, tokenizer, cfg.seq_len) for r in (records.train, records.val))
        def collate(b):
            return kto_collate(b, cfg.seq_len, pad)
    else:
        items, val = (encode_pairs(r, tokenizer, cfg.seq_len) for r in (records.train, records.val))
        def collate(b):
            return collate_preference(b, pad)
    if len(items) < bs:
        raise ValueError(f"{records.source}: {len(items)} training examples cannot fill one batch of {bs}")
    val_batches = [collate(val[i:i + bs]) for i in range(0, len(val), bs)]
    return Data(ConversationBatches(items, bs, cfg.seed, collate=collate), tokenizer=tokenizer), val_batches


def train_config(cfg: AlignConfig, source: Path | str, tokenizer_source: Path | str) -> TrainConfig:
    out = Path(cfg.out_dir)
    lr = cfg.method_lr
    return TrainConfig(task="sft", model=str(source), tokenizer=str(tokenizer_source), data=cfg.data_name,
                       seq_len=cfg.seq_len, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       max_steps=cfg.max_steps, lr=lr, min_lr=lr / 10, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                       save_every=cfg.save_every, keep_last=1, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                       plot=False, out_dir=str(out / "train"),
                       export_dir=str(out / ("adapter" if cfg.peft == "lora" else "model")))


def _samples(cfg: AlignConfig, model: nn.Module, tokenizer, val: list[dict[str, Any]]) -> list[str]:
    if cfg.method == "reward" or not cfg.samples:
        return []
    texts, _ = sample(model, tokenizer, val[:cfg.samples], n=1, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                      seed=None)
    return texts


def align(cfg: AlignConfig, reward_fn: RewardFn | None = None) -> dict[str, Any] | None:
    """Run ``cfg``; returns the report (also ``out_dir/align.json``), or None when interrupted.

    Args:
        cfg: the run.
        reward_fn: GRPO only: ``reward_fn(record, completion_text) -> float``; default: the
            arithmetic verifier (``Answer: <number>`` equal to the record's ``answer``).

    Raises:
        FileNotFoundError, ValueError (:class:`~llmkit.align.data.DataError` for bad records): before training.
    """
    cfg = cfg.validate()
    out = Path(cfg.out_dir)
    if cfg.method == "best-of-n":
        return _best_of_n(cfg)
    if latest_checkpoint(out / "train") is not None and not cfg.resume:
        raise ValueError(f"{out} already holds an alignment run: continue it with --resume (and a larger "
                         "--max_steps), or choose another --out_dir")
    records = load_records(cfg)
    teacher, tokenizer_source = None, None
    if cfg.method == "distill":
        tokenizer_source = resolve_model(cfg.teacher)
        teacher, teacher_tokenizer = load_model_and_tokenizer(tokenizer_source)
        teacher = teacher.float().eval().requires_grad_(False)
        model, tokenizer, source = build_policy(cfg, teacher_tokenizer)
        if model.cfg.vocab_size != teacher.cfg.vocab_size:
            raise ValueError(f"student vocabulary {model.cfg.vocab_size} != teacher's {teacher.cfg.vocab_size}: "
                             "distillation needs a shared tokenizer")
    else:
        model, tokenizer, source = build_policy(cfg)
    data, val_batches = build_data(cfg, records, tokenizer)
    objective = build_objective(cfg, model, tokenizer, reward_fn, teacher)
    before_samples = _samples(cfg, model, tokenizer, records.val)
    trainer = AlignTrainer(objective, train_config(cfg, source, tokenizer_source or source), model=model, data=data,
                           resume=cfg.resume,
                           val_batches=(lambda: val_batches) if val_batches else None)
    try:
        before = trainer.evaluate()
        print(f"llmkit align: before: {_line(before)}", flush=True)
        if before and trainer.metrics and trainer.step == 0:  # the starting point on the curves
            trainer.metrics.write({"step": 0, **before})
        start = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - start
        after = {} if result.interrupted else result.eval or trainer.evaluate()
    finally:
        trainer.close()
    if result.interrupted:
        print("llmkit align: interrupted; the same command with --resume continues", flush=True)
        return None
    print(f"llmkit align: after:  {_line(after)}", flush=True)
    if isinstance(model, RewardModel):
        model.save(out / "reward_model.safetensors")
    after_samples = _samples(cfg, model, tokenizer, records.val)
    report = {"config": cfg.to_dict(), "data": records.source, "base_model": str(source), "steps": result.step,
              "train_seconds": round(seconds, 1), "before": before, "after": after,
              "samples": [{"prompt": r["prompt"][-1]["content"], "before": b, "after": a}
                          for r, b, a in zip(records.val, before_samples, after_samples)]}
    (out / "align.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if cfg.plot:
        plot_align_curves(_read_metrics(out / "train" / "metrics.jsonl"), out / "curves.png")
    write_report(out / "report.md", report, _command(cfg))
    print(f"llmkit align: wrote {out / 'report.md'}, {out / 'align.json'}", flush=True)
    return report


def _best_of_n(cfg: AlignConfig) -> dict[str, Any]:
    """Rejection sampling with the model as it is (no training): see :mod:`llmkit.align.best_of_n`."""
    records = load_records(cfg).train
    model, tokenizer = load_model_and_tokenizer(resolve_model(cfg.model))
    scorer = reward_model_scorer(load_reward_model(cfg.reward_model), tokenizer, cfg.seq_len) if cfg.reward_model \
        else None
    summary = best_of_n(model, tokenizer, records, cfg.out_dir, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed, scorer=scorer,
                        min_score=cfg.min_score)
    print(f"llmkit align: best-of-{cfg.group_size} over {summary['prompts']} prompts: mean score "
          f"{summary['mean_score_first']:.4f} (one sample) -> {summary['mean_score_best']:.4f} (best); kept "
          f"{summary['kept']} in {summary['output']}", flush=True)
    return summary


def _command(cfg: AlignConfig) -> str:
    """The command line that ran (from the CLI), or the config (from the library)."""
    if sys.argv[1:2] == ["align"]:
        return "llmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"llmkit.align.align({cfg!r})"


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "(no held-out data)"
