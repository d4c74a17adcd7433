"""`FinetuneConfig`: one fine-tuning run; the CLI's flags (``llmkit finetune``) are its fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.train.config import DType, Schedule, _help
from llmkit.validate import check_choices

Method = Literal["lora", "qlora", "dora", "full", "prefix", "prompt"]
LORA_METHODS = ("lora", "qlora", "dora")
VIRTUAL_METHODS = ("prefix", "prompt")
METHOD_LR = {"full": 2e-5, "lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "prefix": 1e-2, "prompt": 3e-2}


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run; the training fields are passed through to :class:`~llmkit.train.TrainConfig`."""

    # --- what ---
    method: Method = field(default="lora", metadata=_help("what to train"))
    model: str = field(default="smollm2-135m-instruct", metadata=_help("model name, HF directory or .gguf file"))
    data: str = field(default="austen-chat", metadata=_help(
        'a .jsonl of {"messages": [...]} per line, or a named chat set (austen-chat, shakespeare-chat)'))
    val_data: str = field(default="", metadata=_help(
        "validation .jsonl or named set; empty: the named set's val split (a .jsonl data: no validation)"))
    out_dir: str = field(default="out/finetune", metadata=_help("adapter/, model/, train/, finetune.json"))

    # --- method ---
    r: int = field(default=16, metadata=_help("LoRA rank"))
    alpha: float = field(default=32.0, metadata=_help("LoRA scale numerator (scale = alpha / r)"))
    dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata=_help(
        "layers LoRA wraps: all-linear (every linear but the head) or names, e.g. q_proj,k_proj,v_proj,o_proj"))
    n_virtual: int = field(default=20, metadata=_help("prompt: virtual tokens; prefix: prefix length"))
    merge: bool = field(default=False, metadata=_help("also write the merged model to out_dir/model (LoRA family)"))
    qat: Literal["", "int8", "int4"] = field(default="", metadata=_help(
        "method full: quantisation-aware training; out_dir/model is then the int8/int4 model (TrainConfig.qat)"))

    # --- training ---
    max_steps: int = field(default=100, metadata=_help("optimizer steps"))
    batch_size: int = field(default=8, metadata=_help("conversations per step"))
    seq_len: int = field(default=256, metadata=_help("tokens per conversation at most (longer ones are cut)"))
    lr: float | None = field(default=None, metadata=_help(f"peak learning rate; default per method {METHOD_LR}"))
    warmup_steps: int = field(default=10, metadata=_help("linear warmup steps"))
    schedule: Schedule = field(default="cosine", metadata=_help(
        "learning-rate schedule after warmup (decays to lr / 10)"))
    eval_every: int = field(default=0, metadata=_help("steps between validation runs; 0 = before and after only"))
    eval_batches: int = field(default=20, metadata=_help("validation batches per evaluation"))
    save_every: int = field(default=0, metadata=_help("steps between resumable checkpoints; 0 = at the end"))
    seed: int = field(default=1337, metadata=_help("seeds adapter init, dropout and data order"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    dtype: DType = field(default="fp32", metadata=_help(
        "fp32, or bf16/fp16 autocast (weights stay fp32)"))
    resume: bool = field(default=False, metadata=_help("continue the run in out_dir from its newest checkpoint"))
    plot: bool = field(default=True, metadata=_help("draw out_dir/train/curves.png (needs matplotlib)"))

    # --- report ---
    samples: int = field(default=0, metadata=_help(
        "greedy answers to the first N validation questions, before and after (printed, in finetune.json)"))

    def validate(self) -> FinetuneConfig:
        """Check the fields; raise ``ValueError`` naming the first bad one. Returns self."""
        check_choices(self)
        for name in ("r", "n_virtual", "max_steps", "batch_size", "seq_len", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not self.target_modules:
            raise ValueError("target_modules is empty: give all-linear or layer names")
        if self.qat and self.method != "full":
            raise ValueError(f"qat={self.qat!r} trains the model's own weights: use method=full, not {self.method}")
        if self.merge and self.method in VIRTUAL_METHODS:
            raise ValueError(f"merge=True: {self.method} tuning adds virtual tokens, which cannot be merged into weights")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
