"""The fine-tuning methods as they are put on a base model: NF4 base for QLoRA, then the adapter.

Every method is one call into :mod:`llmkit.peft`; ``full`` unfreezes everything.
Prefix and prompt tuning return a whole-model wrapper that has the base
model's inference interface, so the Trainer and ``generate`` run it unchanged.
"""
from __future__ import annotations

from torch import nn

from llmkit.finetune.config import LORA_METHODS, FinetuneConfig
from llmkit.peft import apply_lora, apply_prefix_tuning, apply_prompt_tuning, quantize_model_4bit


def prepare_base(model: nn.Module, method: str) -> nn.Module:
    """The model training starts from: an NF4-quantised copy for ``qlora``, ``model`` itself otherwise."""
    return quantize_model_4bit(model) if method == "qlora" else model


def attach(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Put ``cfg.method`` on ``model`` (in place where possible); only its parameters stay trainable."""
    if cfg.method == "full":
        return model.requires_grad_(True)
    if cfg.method in LORA_METHODS:
        targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        return apply_lora(model, targets, cfg.r, cfg.alpha, cfg.dropout, use_dora=cfg.method == "dora")
    wrap = apply_prefix_tuning if cfg.method == "prefix" else apply_prompt_tuning
    return wrap(model, cfg.n_virtual)
