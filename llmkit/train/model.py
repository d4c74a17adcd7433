"""The model a run trains: a preset (random init) or an HF model directory (its weights), plus overrides.

The config is resolved first (:func:`model_config`), because the data needs
the vocabulary size before the model exists (to train a tokenizer of that
size, or to check the shards fit). The weights are always fp32 (master
weights); mixed precision is autocast's job. A preset's init is drawn on the
CPU from ``seed``, so the same seed gives the same initial model on any
device and on every data-parallel rank.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmkit.config import ModelConfig
from llmkit.model import CausalLM
from llmkit.presets import PRESETS
from llmkit.train.config import apply_overrides


def model_config(cfg) -> ModelConfig:
    """The ModelConfig of ``cfg.model`` (a preset name or HF directory) with ``cfg.model_overrides`` applied."""
    if cfg.model in PRESETS:
        base = PRESETS[cfg.model]
    elif Path(cfg.model).is_dir():
        from llmkit.io.hf import read_hf_config

        base, _ = read_hf_config(Path(cfg.model))
    else:
        raise ValueError(f"model {cfg.model!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         "nor an HF model directory")
    return apply_overrides(base, cfg.model_overrides).validate()


def build_model(cfg, mcfg: ModelConfig, tokenizer=None) -> CausalLM:
    """A trainable fp32 CausalLM on the CPU.

    Args:
        cfg: the TrainConfig (``model``, ``seed``).
        mcfg: from :func:`model_config`.
        tokenizer: for a preset, fills the BOS/EOS/PAD ids the preset leaves unset, so the
            saved model knows when to stop generating.
    """
    if cfg.model in PRESETS:
        if tokenizer is not None:
            ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
            mcfg = mcfg.replace(**{k: v for k, v in ids.items() if getattr(mcfg, k) is None and v is not None})
        torch.manual_seed(cfg.seed)
        model = CausalLM(mcfg)
    else:
        from llmkit.io.hf import read_hf_config, read_hf_state_dict
        from llmkit.io.load import build_from_state_dict

        _, raw = read_hf_config(Path(cfg.model))
        state = read_hf_state_dict(Path(cfg.model), raw.get("model_type"))
        model = build_from_state_dict(mcfg, state, dtype=torch.float32, device="cpu", source=cfg.model)
    return model.float().train()
