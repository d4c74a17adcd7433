"""The fine-tuning run: load, answer before, attach, train, answer after, write the outputs and the report.

See :mod:`llmkit.finetune` for the steps and the files in ``out_dir``. The
Trainer writes the adapter (or, for ``full``, the model) as its export; this
adds the merged model for ``merge`` and ``finetune.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit.data import read_conversations, resolve_chat_data
from llmkit.finetune.config import METHOD_LR, FinetuneConfig
from llmkit.finetune.methods import attach, prepare_base
from llmkit.generate import generate, load_model_and_tokenizer
from llmkit.io.pull import resolve_model
from llmkit.peft import disable_adapters, merge_and_unload, trainable_parameters
from llmkit.train import Trainer, TrainConfig
from llmkit.train.checkpoint import latest_checkpoint

SAMPLE_TOKENS = 80  # greedy tokens per before/after answer


def _held_out(val: Path | None, n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` validation conversations (the last message is the reference answer)."""
    return read_conversations(val)[:n] if val and n else []


def merge_outputs(model: nn.Module, tokenizer, cfg: FinetuneConfig) -> dict[str, str]:
    """Where the outputs are ({"adapter"|"model": path}); with ``merge``, writes the merged model first.

    The Trainer has exported the adapter (or, for ``full``, the model). Merging comes last because it
    removes the adapters from ``model``.
    """
    out = Path(cfg.out_dir)
    written = {"model": str(out / "model")} if cfg.method == "full" else {"adapter": str(out / "adapter")}
    if cfg.merge and cfg.method != "full":
        merged = merge_and_unload(model)
        merged.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        written["model"] = str(out / "model")
    return written


# ----- the run -----
def train_config(cfg: FinetuneConfig, train: Path, val: Path | None, tokenizer: Path):
    """The :class:`~llmkit.train.TrainConfig` of ``cfg``: SFT on ``train``, checkpoints in ``out_dir/train``,
    the export in ``out_dir/model`` (``full``) or ``out_dir/adapter``."""
    lr = cfg.lr or METHOD_LR[cfg.method]
    return TrainConfig(task="sft", model=cfg.model, tokenizer=str(tokenizer), data=str(train),
                       val_data=str(val) if val else "", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                       max_steps=cfg.max_steps, lr=lr, min_lr=lr / 10, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                       save_every=cfg.save_every, keep_last=1,  # each checkpoint holds the whole base model
                       seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, plot=cfg.plot, qat=cfg.qat,
                       out_dir=str(Path(cfg.out_dir) / "train"),
                       export_dir=str(Path(cfg.out_dir) / ("model" if cfg.method == "full" else "adapter")))


def _answers(model: nn.Module, tokenizer, questions: list[list[dict[str, str]]]) -> list[str]:
    """Greedy replies (at most ``SAMPLE_TOKENS``) to each conversation, in eval mode; frees the KV cache."""
    if not questions:
        return []
    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, questions, max_new_tokens=SAMPLE_TOKENS).texts
    finally:  # a cache left behind would lack the slots of virtual tokens attached later
        model.clear_caches()
        model.train(was_training)


def _loss_line(metrics: dict[str, float]) -> str:
    return f"val loss {metrics['val_loss']:.4f} (ppl {metrics['val_ppl']:.2f}, {metrics['val_tokens']} tokens)"


def finetune(cfg: FinetuneConfig) -> dict[str, Any] | None:
    """Fine-tune as ``cfg`` says, write the outputs and ``out_dir/finetune.json``, and return that report.

    Returns:
        The report, or None when training was interrupted (Ctrl-C): a checkpoint was saved and the
        same command with ``resume=True`` continues.
    Raises:
        FileNotFoundError: missing data or model files.
        ValueError: a bad config, or an ``out_dir`` holding a run without ``resume``.
    """
    cfg = cfg.validate()
    out = Path(cfg.out_dir)
    train_path, val_path = resolve_chat_data(cfg.data, cfg.val_data)
    if latest_checkpoint(out / "train") is not None and not cfg.resume:
        raise ValueError(f"{out} already holds a fine-tuning run: continue it with --resume (and a larger "
                         "--max_steps), or choose another --out_dir")
    source = resolve_model(cfg.model)
    model, tokenizer = load_model_and_tokenizer(source)
    model = prepare_base(model.float(), cfg.method)
    held_out = _held_out(val_path, cfg.samples)
    before_answers = _answers(model, tokenizer, [conv[:-1] for conv in held_out])
    base_total = trainable_parameters(model)[1]
    torch.manual_seed(cfg.seed)
    model = attach(model, cfg)
    trainable = trainable_parameters(model)[0]
    total = base_total if cfg.method == "full" else base_total + trainable  # an untied head is not new
    print(f"llmkit finetune: {cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / total:.2f}%)", flush=True)

    trainer = Trainer(train_config(cfg, train_path, val_path, source), model=model, resume=cfg.resume)
    try:
        with disable_adapters(model):  # the starting point (full fine-tuning: the weights as loaded or resumed)
            before = trainer.evaluate()
        if before:
            print(f"llmkit finetune: before: {_loss_line(before)}", flush=True)
        start = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - start
        # the last step evaluates; a resumed run that was already finished has no last step
        after = {} if result.interrupted else result.eval or trainer.evaluate()
    finally:
        trainer.close()
    if result.interrupted:
        print("llmkit finetune: interrupted; the same command with --resume continues", flush=True)
        return None
    if after:
        print(f"llmkit finetune: after:  {_loss_line(after)}", flush=True)
    after_answers = _answers(model, tokenizer, [conv[:-1] for conv in held_out])
    written = merge_outputs(model, tokenizer, cfg)
    report = {
        "config": cfg.to_dict(), "base_model": str(source), "trainable_parameters": trainable,
        "total_parameters": total, "steps": result.step, "train_seconds": round(seconds, 1),
        "last_train_loss": result.last.get("loss"), "before": before, "after": after, "outputs": written,
        "samples": [{"question": conv[-2]["content"], "reference": conv[-1]["content"], "before": b, "after": a}
                    for conv, b, a in zip(held_out, before_answers, after_answers)],
    }
    (out / "finetune.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for i, s in enumerate(report["samples"], 1):
        print(f"\n[{i}] Q: {s['question']}\n    reference: {s['reference']}\n    before: {s['before']}\n"
              f"    after:  {s['after']}")
    print(f"llmkit finetune: wrote {', '.join(written.values())} and {out / 'finetune.json'}", flush=True)
    return report
