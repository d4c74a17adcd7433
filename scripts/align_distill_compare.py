"""Distillation vs training on the text alone, same student, same steps; then the student as a draft model.

    python scripts/align_distill_compare.py [--student nano] [--steps 60] [--out out/distill-compare]

Both runs start from the same random init of ``--student`` (a preset, SmolLM2's tokenizer) and see the
same batches of ``austen-chat`` in the same order under the same optimizer and schedule
(:func:`llmkit.align.run` builds both); they differ only in the loss:

- ``kd``: :class:`~llmkit.align.online.DistillObjective` with ``beta=0`` (forward KL to the teacher's
  next-token distribution on the data's completions: Hinton's KD), the teacher SmolLM2-135M-Instruct;
- ``text``: the next-token cross-entropy of the same completions (what ``llmkit finetune`` minimises).

Reported for each: held-out perplexity of the student on the validation completions (``val_ppl``), its
divergence to the teacher there (``val_loss``), and, with the student as the draft of the engine's
speculative decoding (``SpeculativeConfig(method="draft", num_tokens=4)``, greedy), the share of drafted
tokens the teacher accepted on ``--n_prompts`` held-out prompts. Writes ``OUT/results.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llmkit.align import AlignConfig
from llmkit.align.online import DistillObjective
from llmkit.align.run import build_data, build_policy, load_records, train_config
from llmkit.align.trainer import AlignTrainer
from llmkit.engine import LLM, SpeculativeConfig
from llmkit.generate import SamplingParams, load_model_and_tokenizer
from llmkit.io.pull import resolve_model


class TextOnly(DistillObjective):
    """The same batches, trained on the data's tokens alone (cross-entropy); evaluated as the KD student is."""

    def loss(self, module, model, batch, step):
        x, y = self._batch(model, batch, step)
        _, nll = self._losses(module, x, y)
        return nll, {"nll": nll.item(), "tokens": x.numel()}


def train(cfg: AlignConfig, teacher, teacher_tokenizer, objective_cls) -> tuple[torch.nn.Module, dict, dict]:
    records = load_records(cfg)
    student, tokenizer, source = build_policy(cfg, teacher_tokenizer)
    data, val = build_data(cfg, records, tokenizer)
    objective = objective_cls(teacher, tokenizer, 0.0, 1.0, 0.0, cfg.max_new_tokens, cfg.seq_len, cfg.seed,
                              cfg.eval_batches)
    trainer = AlignTrainer(objective, train_config(cfg, source, resolve_model(cfg.teacher)), model=student,
                           data=data, val_batches=lambda: val)
    try:
        before = trainer.evaluate()
        if trainer.metrics:
            trainer.metrics.write({"step": 0, **before})
        result = trainer.fit()
        after = result.eval or trainer.evaluate()
    finally:
        trainer.close()
    return student.eval(), before, after


def acceptance(teacher, tokenizer, student, prompts: list) -> float:
    llm = LLM(teacher, tokenizer=tokenizer, speculative=SpeculativeConfig(method="draft", draft_model=student,
                                                                          num_tokens=4))
    outs = llm.generate(prompts, SamplingParams(max_tokens=48), use_tqdm=False)
    proposed = sum(o.metrics.spec_proposed_tokens for o in outs)
    return sum(o.metrics.spec_accepted_tokens for o in outs) / max(proposed, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="nano")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--seq_len", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval_batches", type=int, default=8)
    ap.add_argument("--n_prompts", type=int, default=16)
    ap.add_argument("--out", default="out/distill-compare")
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher_src = resolve_model("smollm2-135m-instruct")
    teacher, tokenizer = load_model_and_tokenizer(teacher_src)
    teacher = teacher.float().eval().requires_grad_(False)
    results = {"args": vars(args)}
    val_prompts = None
    for name, cls in (("kd", DistillObjective), ("text", TextOnly)):
        cfg = AlignConfig(method="distill", model=args.student, teacher="smollm2-135m-instruct", data="austen-chat",
                          peft="none", max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                          lr=args.lr, warmup_steps=5, eval_batches=args.eval_batches, device="cpu", samples=0,
                          plot=False, out_dir=f"{args.out}/{name}").validate()
        student, before, after = train(cfg, teacher, tokenizer, cls)
        val_prompts = val_prompts or [r["prompt"] for r in load_records(cfg).val[:args.n_prompts]]
        rate = acceptance(teacher, tokenizer, student, val_prompts)
        results[name] = {"before": before, "after": after, "acceptance_rate": rate}
        print(f"{name}: val_ppl {before['val_ppl']:.1f} -> {after['val_ppl']:.1f}, divergence to teacher "
              f"{before['val_loss']:.3f} -> {after['val_loss']:.3f}, draft acceptance {rate:.3f}", flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
