"""Hugging Face checkpoint directories: ``config.json`` + safetensors (single file or sharded index).

Our parameter names are HF's, so the only renames are the documented per-arch
ones (Mixtral keeps its experts under ``block_sparse_moe`` as ``w1/w3/w2``).
Weights are read only through safetensors; nothing is ever unpickled.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmkit.config import ModelConfig
from llmkit.io.atomic import atomic_dir
from llmkit.io.errors import CheckpointError
from llmkit.io.hf_config import config_from_hf, config_to_hf, hf_model_type

# Per-model_type (ours, theirs) name templates; "{}" stands for an expert index.
_RENAMES = {
    "mixtral": [
        (".mlp.gate.weight", ".block_sparse_moe.gate.weight"),
        (".mlp.experts.{}.gate_proj.", ".block_sparse_moe.experts.{}.w1."),
        (".mlp.experts.{}.up_proj.", ".block_sparse_moe.experts.{}.w3."),
        (".mlp.experts.{}.down_proj.", ".block_sparse_moe.experts.{}.w2."),
    ],
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def rename(name: str, model_type: str | None, to_hf: bool) -> str:
    """Map a tensor name between llmkit and the on-disk HF layout of ``model_type``."""
    for ours, theirs in _RENAMES.get(model_type or "", []):
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        name = re.sub(re.escape(src).replace(r"\{\}", r"(\d+)"), dst.replace("{}", r"\1"), name)
    return name


def read_json_object(path: Path) -> dict:
    """The JSON object in the file ``path``.

    Raises:
        CheckpointError: the file is not valid JSON, or holds something other than an object.
    """
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON): {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return raw


def read_hf_config(directory: Path) -> tuple[ModelConfig, dict]:
    """(config, the raw ``config.json``) of an HF model directory."""
    path = directory / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory} has no config.json (is it a Hugging Face model directory?)")
    raw = read_json_object(path)
    return config_from_hf(raw), raw


def hf_weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the index when sharded."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
        files = [directory / f for f in sorted(set(weight_map.values()))]
    else:
        files = [directory / "model.safetensors"]
    for f in files:
        if not f.exists():
            if f.name == "model.safetensors" and any(directory.glob("*.bin")):
                raise CheckpointError(f"{directory} holds only pickled .bin weights; llmkit loads safetensors only "
                                      "(convert them with transformers' save_pretrained(safe_serialization=True))")
            raise CheckpointError(f"missing weight file {f}")
    return files


def read_hf_state_dict(directory: Path, model_type: str | None) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint, renamed to llmkit's names."""
    out: dict[str, torch.Tensor] = {}
    for f in hf_weight_files(directory):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    out[rename(key, model_type, to_hf=False)] = fh.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {f}: the file is truncated or corrupt ({e})") from e
    return out


def save_hf(model, directory: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
    """Write ``config.json`` and safetensors weights (sharded with an index above ``max_shard_bytes``).

    The directory is replaced atomically, so an interrupted save leaves the old one intact.
    """
    cfg: ModelConfig = model.cfg
    mt = hf_model_type(cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.lm_head_tied:
            continue
        state[rename(name, mt, to_hf=True)] = tensor.detach().contiguous().cpu()
    dtype = next(iter(state.values())).dtype
    dtype_name = {v: k for k, v in _DTYPES.items()}.get(dtype, "float32")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    with atomic_dir(directory) as tmp:
        hf_config = config_to_hf(cfg, dtype_name)
        if getattr(model, "quantization_config", None):  # set by llmkit.quant.quantize; read back by load_model
            hf_config["quantization_config"] = model.quantization_config
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
            return
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
