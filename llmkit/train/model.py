"""The model a run trains: a preset or config file (random init) or a checkpoint (its weights), plus overrides.

``TrainConfig.model`` is anything :func:`llmkit.io.resolve_config` accepts: a
preset or config ``.json`` starts from a random init, an HF model directory,
``.gguf`` file or pulled model name from its weights. The config is resolved
first (:func:`model_config`), because the data needs the vocabulary size
before the model exists (to train a tokenizer of that size, or to check the
shards fit). The weights are always fp32 (master weights); mixed precision is
autocast's job. A random init is drawn on the CPU from ``seed``, so the same
seed gives the same initial model on any device and on every data-parallel
rank.
"""
from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.io import resolve_config
from llmkit.io.build import build_from_state_dict
from llmkit.io.load import read_checkpoint
from llmkit.model import CausalLM
from llmkit.train.config import apply_overrides


def model_config(cfg) -> ModelConfig:
    """The ModelConfig of ``cfg.model`` (see :func:`~llmkit.io.resolve_config`) with ``cfg.model_overrides`` applied."""
    return apply_overrides(resolve_config(cfg.model).config, cfg.model_overrides).validate()


def build_model(cfg, mcfg: ModelConfig, tokenizer=None) -> CausalLM:
    """A trainable fp32 CausalLM on the CPU.

    Args:
        cfg: the TrainConfig (``model``, ``seed``).
        mcfg: from :func:`model_config`.
        tokenizer: for a random init, fills the BOS/EOS/PAD ids the config leaves unset, so the
            saved model knows when to stop generating.
    """
    weights = resolve_config(cfg.model).weights
    if weights is None:
        if tokenizer is not None:
            ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
            mcfg = mcfg.replace(**{k: v for k, v in ids.items() if getattr(mcfg, k) is None and v is not None})
        torch.manual_seed(cfg.seed)
        model = CausalLM(mcfg)
    else:
        _, state = read_checkpoint(weights, torch.float32)
        model = build_from_state_dict(mcfg, state, dtype=torch.float32, device="cpu", source=str(weights))
    return model.float().train()
