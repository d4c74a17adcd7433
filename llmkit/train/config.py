"""`TrainConfig`: every knob of a training run in one typed dataclass.

The same dataclass is the library's argument, the CLI's flags (``llmkit train
--lr 1e-3``), the YAML recipe's schema and the JSON saved in every checkpoint,
so a run is reproducible from its checkpoint alone. Model architecture stays
in :class:`~llmkit.config.ModelConfig`; ``model`` is anything
:func:`llmkit.io.resolve_config` accepts (a preset, config, checkpoint or
pulled model) and ``model_overrides`` changes single fields of it (dropout for a
fine-tune, a smaller ``n_layers`` for a test). ``ModelOverrides`` is generated
from ``ModelConfig`` -- every field, optional -- so it never drifts from the
model and each override is typed (``--model_overrides.resid_dropout 0.1``).
An override cannot set a field back to ``None``.

Resuming (:func:`check_resume`) accepts only the saved config, except that
``max_steps`` may be raised: anything else would silently change the run the
checkpoint belongs to.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.config import ModelConfig
from llmkit.io.resolve import ACCEPTED
from llmkit.overrides import given, optional_fields
from llmkit.validate import check_choices

Task = Literal["pretrain", "sft"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
DType = Literal["fp32", "bf16", "fp16"]
Parallel = Literal["ddp", "fsdp"]
SequenceParallel = Literal["none", "ring", "ulysses"]


ModelOverrides = optional_fields(ModelConfig, "ModelOverrides",
                                 "ModelConfig fields to replace in the chosen model; None keeps the model's value.",
                                 lambda f: f"replace the model's {f.name}")
ModelOverrides.__module__ = __name__


def apply_overrides(cfg: ModelConfig, overrides: Any) -> ModelConfig:
    """``cfg`` with every non-None field of ``overrides`` replaced."""
    changes = given(overrides)
    return cfg.replace(**changes) if changes else cfg


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """One training run: what to train, on what, how, and where to write it."""

    # --- what ---
    task: Task = field(default="pretrain", metadata=_help("pretrain on packed text, or sft on chat conversations"))
    model: str = field(default="tiny", metadata=_help(
        f"{ACCEPTED}; a preset or config starts from a random init, a checkpoint from its weights"))
    model_overrides: ModelOverrides = field(default_factory=ModelOverrides,
                                            metadata=_help("ModelConfig fields to change"))
    tokenizer: str = field(default="", metadata=_help(
        "tokenizer directory, tokenizer.json or .gguf; empty: the checkpoint's, or a BPE trained on the training text"))

    # --- data ---
    data: str = field(default="shakespeare", metadata=_help(
        "shard dir (manifest.json), dir with train/ and val/ shard dirs, corpus name or text path; "
        "sft: a .jsonl of conversations"))
    val_data: str = field(default="", metadata=_help("validation shard dir or .jsonl; empty: from data if it has one"))
    seq_len: int = field(default=256, metadata=_help("tokens per sequence"))
    batch_size: int = field(default=16, metadata=_help("sequences per micro-batch on each rank"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))

    # --- optimisation ---
    max_steps: int = field(default=1000, metadata=_help("optimizer steps of the whole run"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr: float = field(default=1e-4, metadata=_help("final learning rate of the decaying schedules"))
    warmup_steps: int = field(default=100, metadata=_help("linear warmup from lr/warmup_steps to lr"))
    schedule: Schedule = field(default="cosine", metadata=_help("learning-rate schedule after warmup"))
    decay_fraction: float = field(default=0.2, metadata=_help("wsd: share of max_steps spent decaying to min_lr"))
    weight_decay: float = field(default=0.1, metadata=_help("decoupled AdamW decay of matrices (not norms, biases, embeddings)"))
    beta1: float = field(default=0.9, metadata=_help("AdamW first-moment decay"))
    beta2: float = field(default=0.95, metadata=_help("AdamW second-moment decay"))
    eps: float = field(default=1e-8, metadata=_help("AdamW denominator epsilon"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the global gradient norm to this; 0 = off"))
    freeze: list[str] = field(default_factory=list, metadata=_help(
        "parameter names to freeze: globs, or regexes prefixed with 're:'"))
    qat: str = field(default="", metadata=_help(
        "quantisation-aware training for int8 or int4 (groups of qat_group_size): the block linears train through the "
        "scheme's rounding and the export is the quantised model; empty = off"))
    qat_group_size: int = field(default=64, metadata=_help(
        "int4 QAT's group size (must divide every block linear's in_features, e.g. 32 for the nano preset)"))

    # --- execution ---
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N (under torchrun: the local GPU)"))
    dtype: DType = field(default="fp32", metadata=_help("fp32, bf16 autocast, or fp16 autocast + GradScaler (CUDA)"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    grad_checkpointing: bool = field(default=False, metadata=_help("recompute each block's activations in backward"))
    parallel: Parallel = field(default="ddp", metadata=_help("under torchrun: DDP (replicate) or FSDP2 (shard)"))
    sequence_parallel: SequenceParallel = field(default="none", metadata=_help(
        "under torchrun: split every sequence over the ranks (ring attention or Ulysses) instead of the batch, "
        "for sequences too long for one rank's memory; every rank reads the same batches"))
    seed: int = field(default=1337, metadata=_help("seeds init, dropout and data order"))

    # --- output ---
    out_dir: str = field(default="out/train", metadata=_help("checkpoints/, model/, metrics.jsonl, curves.png"))
    export_dir: str = field(default="", metadata=_help(
        "where the finished model goes: an HF directory, or a peft adapter directory when the model has adapters; "
        "empty = out_dir/model"))
    log_every: int = field(default=1, metadata=_help("steps between metrics.jsonl records"))
    eval_every: int = field(default=100, metadata=_help("steps between validation runs; 0 = only at the end"))
    eval_batches: int = field(default=20, metadata=_help("validation batches per rank per evaluation"))
    save_every: int = field(default=500, metadata=_help("steps between checkpoints; 0 = only at the end"))
    keep_last: int = field(default=3, metadata=_help("checkpoints to keep; 0 = all"))
    plot: bool = field(default=True, metadata=_help("write curves.png (needs matplotlib)"))

    def validate(self) -> TrainConfig:
        """Check every field; raise ``ValueError`` naming the first bad one. Returns self."""
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {msg}")

        check_choices(self)
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every", "eval_batches"):
            need(getattr(self, name) > 0, name, "must be > 0")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_last", "weight_decay", "grad_clip", "min_lr"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.min_lr <= self.lr, "min_lr", f"must not exceed lr={self.lr}")
        need(0.0 < self.decay_fraction <= 1.0, "decay_fraction", "must be in (0, 1]")
        need(bool(self.model), "model", f"give {ACCEPTED}")
        need(bool(self.data), "data", "give a shard directory, corpus name or file")
        need(self.qat in ("", "int8", "int4"), "qat", "must be int8, int4 or empty")
        need(self.qat_group_size in (32, 64, 128, 256), "qat_group_size", "must be 32, 64, 128 or 256")
        need(self.sequence_parallel == "none" or not self.compile, "sequence_parallel",
             "cannot be combined with compile (the attention is swapped around every step)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        d = dict(d)
        if "model_overrides" in d:
            d["model_overrides"] = ModelOverrides(**d["model_overrides"])
        if "freeze" in d:
            d["freeze"] = list(d["freeze"])
        return cls(**d)


def check_resume(saved: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The config a resumed run uses: ``saved``, with ``max_steps`` raised if ``given`` asks.

    Args:
        saved: the config stored in the checkpoint.
        given: the fields to check, as :meth:`TrainConfig.to_dict` spells them: the whole new config,
            or only what a user set explicitly (``model_overrides`` then holding only the fields set).

    Raises:
        ValueError: a given field differs from the saved one (other than a larger ``max_steps``).
    """
    saved_dict = saved.to_dict()
    changed = []
    for name, value in given.items():
        old = saved_dict[name]
        if name == "model_overrides":
            diff = {k: v for k, v in value.items() if old.get(k) != v}
            changed += [f"model_overrides.{k}: saved {old.get(k)!r}, given {v!r}" for k, v in diff.items()]
        elif name == "max_steps" and value < old:
            changed.append(f"max_steps: saved {old}, given {value} (max_steps can only be raised)")
        elif name != "max_steps" and value != old:
            changed.append(f"{name}: saved {old!r}, given {value!r}")
    if changed:
        raise ValueError("cannot resume with a changed config (only max_steps may be raised): " + "; ".join(changed))
    return dataclasses.replace(saved, max_steps=max(saved.max_steps, given.get("max_steps", saved.max_steps)))
