"""``llmkit estimate``: parameters, training FLOPs and time, and training/inference memory of a config.

The model comes from ``--preset``, resolved by :func:`llmkit.io.resolve_config`
like every verb's model: a preset name, a JSON file holding either an HF
``config.json`` or a ``ModelConfig`` (what ``llmkit info NAME --json`` prints),
an HF model directory, a GGUF file or a pullable model name. Every
``ModelConfig`` field is also a flag (``--n_layers 48``, ``--n_kv_heads 1``)
that overrides the preset, for what-if sizing. That is also how the CLI framework's ``--config FILE`` (a YAML/JSON file
of flag values) takes a model config: a ``ModelConfig`` JSON's keys are flags,
so ``llmkit estimate --config model.json`` works, alone or over a ``--preset``
(a null in the file keeps the preset's value). An HF ``config.json`` uses
other key names, which the framework rejects as unknown options; pass it to
``--preset``.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from llmkit.config import ModelConfig
from llmkit.estimate.compute import DEFAULT_MFU, H100_BF16_TFLOPS
from llmkit.io.resolve import ACCEPTED

if typing.TYPE_CHECKING:
    from llmkit.estimate import Estimate

_MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]


@dataclass
class EstimateArgs:
    """The verb's own flags; :data:`Args` adds one per ModelConfig field."""

    preset: str = field(default="", metadata={"help": ACCEPTED})
    tokens: int | None = field(default=None, metadata={"help": "training tokens; default 20 per parameter"})
    batch: int = field(default=1, metadata={"help": "sequences per training step, for the memory plans"})
    seq: int = field(default=512, metadata={"help": "tokens per sequence, for the memory plans"})
    flops: float | None = field(default=None, metadata={"help": "compute budget: report the compute-optimal size"})
    mfu: float = field(default=DEFAULT_MFU, metadata={"help": "model FLOPs utilisation for the training time"})
    peak_tflops: float = field(default=H100_BF16_TFLOPS, metadata={"help": "device peak: H100 SXM dense bf16"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA/QLoRA rank, adapters on every attention linear"})
    json: bool = field(default=False, metadata={"help": "print one JSON object"})


def _model_overrides() -> list[tuple[str, typing.Any, typing.Any]]:
    """One optional field per ModelConfig field: None leaves the preset's value."""
    hints = typing.get_type_hints(ModelConfig)
    return [(name, hints[name] | None, field(default=None, metadata={"help": f"override ModelConfig.{name}"}))
            for name in _MODEL_FIELDS]


Args = dataclasses.make_dataclass("Args", _model_overrides(), bases=(EstimateArgs,))


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def _fmt_hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def _print_report(e: Estimate, name: str) -> None:
    active = f", {_fmt_count(e.active_params)} active per token" if e.active_params != e.params else ""
    rows = [
        ("model", name),
        ("parameters", f"{_fmt_count(e.params)} ({e.params:,}){active}"),
        ("training tokens", f"{_fmt_count(e.tokens)} (Chinchilla-optimal: {_fmt_count(e.chinchilla_tokens)})"),
        ("training FLOPs", f"{e.train_flops:.3g} (6ND) = {_fmt_hours(e.train_gpu_hours)} device-hours "
                           f"at {e.mfu:.0%} MFU of {e.peak_tflops:g} TFLOP/s"),
    ]
    if e.optimal_params is not None:
        rows.append(("compute-optimal", f"{_fmt_count(e.optimal_params)} parameters on {_fmt_count(e.optimal_tokens)} "
                                        "tokens for the budget"))
    rows.append(("KV cache", f"{_fmt_bytes(e.kv_cache_bytes_per_token)} per token (bf16)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    unit, size = ("GiB", 2**30) if e.memory["full_fp32"].total() >= 2**30 else ("MiB", 2**20)
    print(f"\ntraining memory, batch {e.batch} x seq {e.seq}, AdamW ({unit}):")
    plans = {"full": "full, mixed bf16", "full_fp32": "full, fp32", "lora": f"LoRA r={e.lora_rank}",
             "qlora": f"QLoRA r={e.lora_rank}"}
    header = ("plan", "weights", "grads", "optimizer", "activations", "total", "checkpointed")
    print(f"  {header[0]:<17}" + "".join(f"{h:>13}" for h in header[1:]))
    for key, label in plans.items():
        m = e.memory[key]
        cols = (m.weights, m.grads, m.optimizer, m.activations, m.total(), m.total(checkpointing=True))
        print(f"  {label:<17}" + "".join(f"{c / size:>13.2f}" for c in cols))
    print("total: gradients and activations coexist (exact with gradient accumulation, an upper bound otherwise)\n"
          "checkpointed: the same with per-block activation recomputation")


def run(args: EstimateArgs) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.estimate import estimate
    from llmkit.io import resolve_config

    overrides = {name: getattr(args, name) for name in _MODEL_FIELDS if getattr(args, name) is not None}
    if not args.preset and not overrides:
        raise UsageError(f"give --preset ({ACCEPTED}), or --config with a model config's fields")
    cfg = resolve_config(args.preset).config if args.preset else ModelConfig()
    cfg = cfg.replace(**overrides)
    e = estimate(cfg, tokens=args.tokens, batch=args.batch, seq=args.seq, flops=args.flops, mfu=args.mfu,
                 peak_tflops=args.peak_tflops, lora_rank=args.lora_rank)
    if args.json:
        print(json.dumps(e.to_dict(), indent=2))
    else:
        _print_report(e, args.preset or "custom config")
    return 0
