"""The speedrun: a small chat model from scratch on a laptop CPU in about ten minutes.

One function, :func:`speedrun`, runs the whole pipeline with embedded defaults:

1. data: fetch the corpus (Shakespeare by default) and split it by whole works;
2. tokenizer: train a byte-level BPE (4,096 tokens) on the training split;
3. pretrain: a small LLaMA-style model (the ``nano`` preset) for most of the budget;
4. evaluate: validation loss and bits per byte on the held-out works (all of them);
5. SFT: fine-tune on a chat set generated from the same corpus (assistant tokens only);
6. report: ``report.md``, ``summary.json`` and PNG curves in the run directory.

Time is the budget, not steps: both stages use a warmup-stable-decay schedule
whose length is re-estimated from the measured step time until the decay
begins (``Trainer.fit(time_limit=...)``), so pretraining and SFT fill their
share of ``minutes`` and still decay fully, which matters more for the final
loss than a few extra steps.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from llmkit.validate import check_choices

# Shares of the training budget (what is left after data and tokenizer preparation).
PRETRAIN_SHARE, SFT_SHARE = 0.82, 0.12


@dataclass(frozen=True)
class SpeedrunConfig:
    """Knobs of the speedrun; defaults are the tuned recipe (see recipes/speedrun.md)."""

    minutes: float = field(default=10.0, metadata={"help": "wall-clock budget of the whole run"})
    preset: str = field(default="nano", metadata={"help": "model shape, a preset name (recipes/speedrun.md: why nano)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    out: str = field(default="", metadata={"help": "run directory; empty: runs/speedrun-<timestamp>"})
    data: str = field(default="shakespeare", metadata={"help": "corpus name, or a .txt/.jsonl file or folder"})
    val_data: str = field(default="", metadata={
        "help": "validation text (file or folder); empty: the corpus's fixed held-out split"})
    vocab_size: int = field(default=4096, metadata={"help": "tokens of the byte-level BPE trained on the data"})
    seq_len: int = field(default=256, metadata={"help": "pretraining context (tokens per sequence)"})
    batch_size: int = field(default=32, metadata={"help": "pretraining sequences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate of pretraining"})
    sft_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of SFT"})
    sft_seq_len: int = field(default=384, metadata={"help": "SFT context (tokens per conversation)"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "precision of both stages (bf16 autocast)"})
    seed: int = field(default=1337, metadata={"help": "seeds init, data order and the generated chat set"})

    def validate(self) -> "SpeedrunConfig":
        """Check the fields; raise ``ValueError`` naming the first bad one. Returns self."""
        from llmkit.presets import PRESETS

        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"SpeedrunConfig.{name}={getattr(self, name)!r}: {msg}")

        check_choices(self)
        need(self.minutes > 0, "minutes", "must be > 0")
        need(self.preset in PRESETS, "preset", f"unknown; choose from {', '.join(sorted(PRESETS))}")
        need(self.vocab_size >= 512, "vocab_size", "must be >= 512")
        return self


def _log(msg: str) -> None:
    print(f"[speedrun] {msg}", flush=True)


def prepare_data(cfg: SpeedrunConfig, run: Path):
    """Documents -> tokenizer -> token shards in ``run/data/{train,val}``. Returns (tokenizer, stats)."""
    from llmkit.data import load_corpus, split_documents, write_shards
    from llmkit.tokenizer import Tokenizer

    docs = load_corpus(cfg.data)
    if cfg.val_data:
        train_docs, val_docs = docs, load_corpus(cfg.val_data)
    else:
        train_docs, val_docs = split_documents(docs, cfg.data if not Path(cfg.data).exists() else "")
    _log(f"data: {len(train_docs)} train / {len(val_docs)} validation documents "
         f"({sum(len(d.text) for d in train_docs):,} / {sum(len(d.text) for d in val_docs):,} characters)")
    start = time.perf_counter()
    tokenizer = Tokenizer.train([d.text for d in train_docs], cfg.vocab_size)
    tokenizer.save_pretrained(run / "tokenizer")
    _log(f"tokenizer: {tokenizer.vocab_size}-token byte-level BPE in {time.perf_counter() - start:.1f}s")
    stats = {"train_docs": len(train_docs), "val_docs": len(val_docs), "val_titles": sorted({d.title for d in val_docs})}
    for name, split in (("train", train_docs), ("val", val_docs)):
        manifest = write_shards(split, lambda t: tokenizer.encode(t, add_special_tokens=False), run / "data" / name,
                                eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size, source=cfg.data)
        stats[f"{name}_tokens"] = manifest["num_tokens"]
        stats[f"{name}_bytes"] = manifest["num_bytes"]
    _log(f"shards: {stats['train_tokens']:,} train / {stats['val_tokens']:,} validation tokens "
         f"({stats['train_bytes'] / stats['train_tokens']:.2f} bytes per token)")
    return tokenizer, train_docs, val_docs, stats


def chat_sets(cfg: SpeedrunConfig, run: Path, train_docs, val_docs) -> tuple[Path, Path]:
    """JSON-lines chat conversations for SFT: the corpus's named set, or one generated from the user's text."""
    from llmkit.data import CHAT_SETS, chat_set_path, make_chat_set, write_conversations

    name = f"{cfg.data}-chat"
    if name in CHAT_SETS and not cfg.val_data:
        return chat_set_path(name, "train"), chat_set_path(name, "val")
    train = write_conversations(run / "chat" / "train.jsonl", make_chat_set(train_docs, 2000, seed=cfg.seed))
    val = write_conversations(run / "chat" / "val.jsonl", make_chat_set(val_docs, 200, seed=cfg.seed + 1))
    return train, val


def _train_config(cfg: SpeedrunConfig, **kw):
    from llmkit.train import TrainConfig

    base = dict(device=cfg.device, dtype=cfg.dtype, seed=cfg.seed, log_every=5, save_every=0, keep_last=1,
                eval_batches=10_000, grad_clip=1.0, weight_decay=0.1, beta2=0.95, schedule="wsd", decay_fraction=0.3)
    return TrainConfig(**{**base, **kw})


def _fit(trainer, seconds: float, min_steps: int):
    """Train within ``seconds`` (:meth:`Trainer.fit`'s time limit); Ctrl-C, once the step is saved, ends the run."""
    try:
        result = trainer.fit(time_limit=seconds, min_steps=min_steps)
    finally:
        trainer.close()
    if result.interrupted:
        _log("interrupted; a speedrun cannot be resumed: start a new one")
        raise KeyboardInterrupt
    return result


def samples(model, tokenizer, prompts: list, chat: bool, max_new_tokens: int = 80) -> list[tuple[str, str]]:
    """Greedy completions (with the chat template when ``chat``), as (prompt, answer) pairs."""
    from llmkit.generate import generate

    out = []
    for p in prompts:
        prompt = [{"role": "user", "content": p}] if chat else p
        text = generate(model.eval(), tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=0.0,
                        repetition_penalty=1.1).text
        out.append((p, text))
    return out


def speedrun(cfg: SpeedrunConfig) -> dict:
    """Run the whole pipeline; returns the summary written to ``summary.json``."""
    from llmkit.estimate.flops import measure_peak_flops, train_flops_per_token
    from llmkit.model import CausalLM
    from llmkit.presets import get_preset
    from llmkit.train import Trainer

    cfg = cfg.validate()
    t0 = time.perf_counter()
    run = Path(cfg.out or f"runs/speedrun-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run / "summary.json").exists():
        raise ValueError(f"{run} already holds a finished speedrun; choose another out directory")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer, train_docs, val_docs, stats = prepare_data(cfg, run)
    chat_train, chat_val = chat_sets(cfg, run, train_docs, val_docs)

    # ----- pretraining, sized to the budget -----
    from llmkit.train import ModelOverrides

    train_seconds = cfg.minutes * 60 - (time.perf_counter() - t0)
    overrides = ModelOverrides(vocab_size=tokenizer.vocab_size, max_seq_len=max(cfg.seq_len, cfg.sft_seq_len))
    # one evaluation, at the end, over the whole held-out text: intermediate full evaluations
    # would cost a sizeable share of a ten-minute budget
    pre_cfg = _train_config(cfg, task="pretrain", model=cfg.preset, model_overrides=overrides, data=str(run / "data"),
                            tokenizer=str(run / "tokenizer"), seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                            lr=cfg.lr, min_lr=cfg.lr / 10, warmup_steps=20, max_steps=100_000, eval_every=0,  # a cap
                            out_dir=str(run / "pretrain"))
    trainer = Trainer(pre_cfg)
    n_params = trainer.model.num_parameters()
    start = time.perf_counter()
    pre = _fit(trainer, train_seconds * PRETRAIN_SHARE, min_steps=30)
    pre_wall, pre_eval = time.perf_counter() - start, pre.eval
    model_cfg = trainer.model.cfg
    pre_tokens = pre.step * cfg.batch_size * cfg.seq_len
    tokens_per_s = pre_tokens / pre_wall
    peak = measure_peak_flops(trainer.d.device, torch.bfloat16 if cfg.dtype == "bf16" else torch.float32)
    mfu = tokens_per_s * train_flops_per_token(model_cfg, cfg.seq_len) / peak
    _log(f"pretrain: {pre.step} steps, val loss {pre_eval['val_loss']:.4f}, val bpb {pre_eval['val_bpb']:.4f}, "
         f"{tokens_per_s:,.0f} tok/s, MFU {mfu:.1%}")

    # ----- samples before SFT -----
    base = CausalLM.from_pretrained(run / "pretrain" / "model")
    chat_prompts = [conv[0]["content"] for conv in _first_conversations(chat_val, 3)]
    text_prompts = _text_prompts(val_docs)
    before = {"text": samples(base, tokenizer, text_prompts, chat=False), "chat": samples(base, tokenizer, chat_prompts, chat=True)}

    # ----- SFT -----
    sft_cfg = _train_config(cfg, task="sft", model=str(run / "pretrain" / "model"), tokenizer=str(run / "tokenizer"),
                            data=str(chat_train), val_data=str(chat_val), seq_len=cfg.sft_seq_len, batch_size=16,
                            lr=cfg.sft_lr, min_lr=cfg.sft_lr / 10, warmup_steps=5, max_steps=100_000, eval_every=0,
                            out_dir=str(run / "sft"))
    trainer = Trainer(sft_cfg)
    sft_before = trainer.evaluate()
    remaining = cfg.minutes * 60 - (time.perf_counter() - t0)
    sft_seconds = max(remaining - 20, 0) * SFT_SHARE / (1 - PRETRAIN_SHARE)  # keep ~20 s for samples and report
    sft = _fit(trainer, sft_seconds, min_steps=10)
    sft_eval = sft.eval
    _log(f"sft: {sft.step} steps, chat val loss {sft_before['val_loss']:.4f} -> {sft_eval['val_loss']:.4f}")
    tuned = CausalLM.from_pretrained(run / "sft" / "model")
    after = {"chat": samples(tuned, tokenizer, chat_prompts, chat=True)}

    summary = {
        "val_bpb": pre_eval["val_bpb"], "val_loss": pre_eval["val_loss"], "train_tokens": pre_tokens,
        "params": n_params, "wall_s": round(time.perf_counter() - t0, 1), "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(mfu, 4), "peak_flops": peak, "pretrain_steps": pre.step, "sft_steps": sft.step,
        "sft_val_loss_before": sft_before["val_loss"], "sft_val_loss_after": sft_eval["val_loss"],
        "data": stats, "config": asdict(cfg), "model_config": model_cfg.to_dict(),
        "device": str(trainer.d.device), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run, summary, before, after)
    _log(f"done in {summary['wall_s']:.0f}s: val bpb {summary['val_bpb']:.4f}; report in {run / 'report.md'}")
    _log(f"chat with it: llmkit chat --model {run / 'sft' / 'model'}")
    return summary


def _first_conversations(path: Path, n: int) -> list:
    """``n`` conversations spread over a JSON-lines file (one of each kind, usually)."""
    from llmkit.data import read_conversations

    conversations = read_conversations(path)
    step = max(len(conversations) // n, 1)
    return conversations[::step][:n]


def _text_prompts(val_docs) -> list[str]:
    """Opening lines of held-out documents, as raw-text prompts."""
    prompts = []
    for doc in val_docs[:2]:
        lines = [l for l in doc.text.splitlines() if l.strip()]
        middle = lines[len(lines) // 2: len(lines) // 2 + 2]
        prompts.append("\n".join(middle) + "\n")
    return prompts


def write_report(run: Path, s: dict, before: dict, after: dict) -> None:
    """``report.md``: configuration, data, results and samples before/after SFT."""
    def block(text: str) -> str:
        return "```\n" + text.strip() + "\n```"

    lines = [
        "# llmkit speedrun report", "",
        f"Wall time {s['wall_s']:.0f} s on {s['device']} ({s['machine']}), torch {s['torch']}.", "",
        "| metric | value |", "|---|---:|",
        f"| validation bits per byte | {s['val_bpb']:.4f} |",
        f"| validation loss (nats/token) | {s['val_loss']:.4f} |",
        f"| parameters | {s['params']:,} |",
        f"| pretraining tokens | {s['train_tokens']:,} ({s['pretrain_steps']} steps) |",
        f"| throughput | {s['tokens_per_s']:,.0f} tokens/s |",
        f"| MFU (vs measured matmul peak {s['peak_flops'] / 1e9:.0f} GFLOP/s) | {s['mfu']:.1%} |",
        f"| SFT chat validation loss | {s['sft_val_loss_before']:.4f} -> {s['sft_val_loss_after']:.4f} ({s['sft_steps']} steps) |",
        "",
        "## Data", "",
        f"Corpus `{s['config']['data']}`: {s['data']['train_docs']} training documents, "
        f"{s['data']['val_docs']} held out ({', '.join(s['data']['val_titles'][:6])}). "
        f"{s['data']['train_tokens']:,} training and {s['data']['val_tokens']:,} validation tokens "
        f"with a {s['model_config']['vocab_size']}-token BPE.", "",
        "## Curves", "", "![pretraining](pretrain/curves.png)", "", "![SFT](sft/curves.png)", "",
        "## Samples before SFT (greedy)", "",
    ]
    for prompt, answer in before["text"]:
        lines += ["Prompt:", block(prompt), "Continuation:", block(answer), ""]
    lines += ["## Chat before and after SFT (greedy)", ""]
    for (prompt, old), (_, new) in zip(before["chat"], after["chat"]):
        lines += ["User:", block(prompt), "Before SFT:", block(old or "(empty)"), "After SFT:", block(new or "(empty)"), ""]
    lines += ["## Configuration", "", block(json.dumps(s["config"], indent=2)), "",
              "Model:", "", block(json.dumps(s["model_config"], indent=2)), ""]
    (run / "report.md").write_text("\n".join(lines))
