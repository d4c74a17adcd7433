"""peft's adapter file format: ``adapter_config.json`` + ``adapter_model.safetensors``.

A saved tensor is named ``base_model.model.<module path>.<adapter tensor>``,
with peft's adapter tensor names (``lora_A.weight``, ``lora_B.weight``,
``lora_magnitude_vector`` for DoRA, ``lora_embedding_A``/``_B``, ``ia3_l``).
The wrappers in ``lora.py`` and ``ia3.py`` use exactly those parameter names,
so saving is a prefix and loading a strip. Because llmkit's module paths are
transformers' (``model.layers.N.self_attn.q_proj``), an adapter saved here
loads with ``peft.PeftModel.from_pretrained`` on the equivalent transformers
model, and one peft saved loads here.

Loading wraps exactly the modules named in the tensor file (peft wraps by
``target_modules``; a targeted module without tensors would be an identity
adapter, so the outputs agree) and reads each LoRA rank from its tensor
shape, which also covers peft's ``rank_pattern``. Settings this format can
express but llmkit does not implement raise ValueError by name. Embedding
base weights that peft saves beside an embedding adapter
(``save_embedding_layers``) are skipped: they are the base model's own.

A PiSSA adapter pairs with its residual base weights (the principal part moved
into A and B), as in peft: save the base model too, or merge before export.

Virtual-token methods are stored as peft stores a trained one: the computed
table ``prompt_embeddings`` (what the prompt encoder or prefix MLP outputs, not
its weights) with ``inference_mode: true``. Prompt and P-tuning save
``PROMPT_TUNING`` (n, dim) virtual embeddings; prefix tuning saves
``PREFIX_TUNING`` with ``prefix_projection: false``, an (n, n_layers * 2 *
kv_dim) table in peft's layer-major key/value layout. Loading rebuilds the
wrapper around the base model with that table as its (trainable) parameter.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmkit.io.atomic import atomic_path, atomic_write_text
from llmkit.io.errors import CheckpointError
from llmkit.peft.apply import wrap_lora
from llmkit.peft.base import adapters, freeze_all_but_adapters, inside_adapter, name_matches, replace_module
from llmkit.peft.ia3 import IA3Linear
from llmkit.peft.lora import LoRALayer
from llmkit.peft.model_adapter import ModelAdapter
from llmkit.peft.prefix import PrefixTuningLM
from llmkit.peft.prompt import VirtualTokenLM

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
VIRTUAL_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
VIRTUAL_TENSOR = "prompt_embeddings"
# peft config fields that change the math; anything but these values is refused on load
SUPPORTED_VALUES = {"bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None,
                    "alpha_pattern": {}, "use_qalora": False, "lora_bias": False, "layer_replication": None}


def _targets(model: nn.Module, paths: list[str]) -> list[str] | str:
    """The shortest peft ``target_modules`` selecting exactly ``paths``: leaf names, else a path regex."""
    leaves = {p.rsplit(".", 1)[-1] for p in paths}
    inner = inside_adapter(model)
    same_leaf = {n for n, _ in model.named_modules() if n and n not in inner and n.rsplit(".", 1)[-1] in leaves}
    if same_leaf == set(paths):
        return sorted(leaves)
    return "(?:" + "|".join(re.escape(p) for p in paths) + ")"


def save_adapter(model: nn.Module, directory: str | Path) -> None:
    """Write the model's adapter in peft's format.

    Args:
        model: a model with adapters from ``apply_lora`` (one shared r/alpha/variant) or ``apply_ia3``,
            or a prompt/P-/prefix-tuned model (``apply_prompt_tuning``, ``apply_prefix_tuning``).
        directory: created if missing; existing adapter files are replaced atomically.
    """
    if isinstance(model, ModelAdapter):
        config, tensors = _virtual_tokens(model)
    else:
        config, tensors = _layer_adapters(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))


def _virtual_tokens(model: ModelAdapter) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's config and ``prompt_embeddings`` table for a prompt/P-/prefix-tuned model."""
    inner = [n for n, _ in adapters(model.base_model) if n != "model.embed_tokens"]
    if inner:
        raise TypeError(f"peft's format holds one method per file; this model also has adapters at {inner[:3]}")
    cfg = model.base_model.cfg
    config = {"task_type": "CAUSAL_LM", "num_virtual_tokens": model.n_virtual, "num_transformer_submodules": 1,
              "num_layers": cfg.n_layers, "inference_mode": True, "base_model_name_or_path": None}
    with torch.no_grad():
        if isinstance(model, PrefixTuningLM):
            config |= {"peft_type": "PREFIX_TUNING", "token_dim": cfg.kv_heads * cfg.head_size,
                       "num_attention_heads": cfg.kv_heads, "prefix_projection": False}
            table = model.prefix_encoder.table()
        else:
            config |= {"peft_type": "PROMPT_TUNING", "token_dim": cfg.dim, "num_attention_heads": cfg.n_heads,
                       "prompt_tuning_init": "RANDOM"}
            table = model.embedding.virtual_embeddings()
    return config, {VIRTUAL_TENSOR: table.detach().float().contiguous().cpu()}


def _layer_adapters(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's config and tensors for LoRA-family or IA3 layer adapters."""
    found = list(adapters(model))
    loras = [(n, a) for n, a in found if isinstance(a, LoRALayer)]
    ia3s = [(n, a) for n, a in found if isinstance(a, IA3Linear)]
    if len(loras) + len(ia3s) != len(found) or (loras and ia3s) or not found:
        kinds = sorted({type(a).__name__ for _, a in found}) or ["none"]
        raise TypeError(f"peft's format holds one LoRA-family or IA3 adapter per file; this model has {kinds}")
    paths = [n for n, _ in found]
    if loras:
        settings = {(a.r, a.lora_alpha, a.use_rslora, getattr(a, "use_dora", False),
                     getattr(getattr(a, "lora_dropout", None), "p", 0.0)) for _, a in loras}
        if len(settings) > 1:
            raise ValueError(f"adapters with different (r, alpha, rslora, dora, dropout) {sorted(settings)} "
                             "cannot share one adapter_config.json")
        r, alpha, rslora, dora, dropout = settings.pop()
        config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": rslora,
                  "use_dora": dora, "init_lora_weights": True, "bias": "none"}
    else:
        ff = [n for n, a in ia3s if a.feedforward]
        config = {"peft_type": "IA3", "feedforward_modules": _targets(model, ff) if ff else [],
                  "init_ia3_weights": True}
    config |= {"target_modules": _targets(model, paths), "task_type": None, "base_model_name_or_path": None,
               "inference_mode": True, "fan_in_fan_out": False, "modules_to_save": None}
    tensors = {f"{PREFIX}{path}.{name}": p.detach().contiguous()
               for path, a in found for name, p in a.adapter_parameters()}
    return config, tensors


def read_adapter(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """An adapter directory's config and flat tensors.

    Raises:
        CheckpointError: a missing or corrupt file.
    """
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
        with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory} is not a peft adapter directory: {e}") from e
    except (json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{directory} holds a corrupt adapter: {e}") from e
    return config, flat


def check_supported(directory: Path, config: dict) -> None:
    """Refuse a layer adapter whose config asks for math llmkit does not implement (:data:`SUPPORTED_VALUES`)."""
    for field, ok in SUPPORTED_VALUES.items():
        if config.get(field) and config[field] != ok:
            raise ValueError(f"{directory}: {field}={config[field]!r} is not supported")


def group_by_module(directory: Path, flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Layer-adapter tensors grouped by module path.

    Raises:
        CheckpointError: a tensor name outside peft's layout.
    """
    grouped: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, t in flat.items():
        if not key.startswith(PREFIX):
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: tensor {key} lacks the {PREFIX!r} prefix")
        match = re.match(r"(.+?)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|lora_embedding_[AB]|ia3_l"
                         r"|base_layer\.weight)$", key[len(PREFIX):])
        if match is None:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: unrecognised adapter tensor {key}")
        if match.group(2) != "base_layer.weight":
            grouped[match.group(1)][match.group(2)] = t
    return grouped


def _load_virtual(model: nn.Module, directory: Path, config: dict, flat: dict[str, torch.Tensor]) -> ModelAdapter:
    """Wrap ``model`` for the saved prompt/P-/prefix tuning and load its table."""
    kind, n = config["peft_type"], config.get("num_virtual_tokens")
    if config.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{directory}: num_transformer_submodules={config['num_transformer_submodules']} "
                         "(encoder-decoder); llmkit's models are decoder-only")
    if set(flat) != {VIRTUAL_TENSOR} or not isinstance(n, int):
        raise CheckpointError(f"{directory}: a {kind} adapter holds one {VIRTUAL_TENSOR!r} tensor and "
                              f"num_virtual_tokens; found {sorted(flat)}")
    if kind == "PREFIX_TUNING":
        wrapped: ModelAdapter = PrefixTuningLM(model, n, projection=False)
        target = wrapped.prefix_encoder.embedding
    else:
        wrapped = VirtualTokenLM(model, n)
        target = wrapped.embedding.prompt_embeddings
    table = flat[VIRTUAL_TENSOR]
    if table.shape != target.shape:
        raise CheckpointError(f"{directory}: {VIRTUAL_TENSOR} has shape {tuple(table.shape)}, this model's "
                              f"{kind} needs {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(table)
    freeze_all_but_adapters(wrapped)
    return wrapped


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Wrap ``model`` with the adapter saved in ``directory`` (by llmkit or peft) and load it.

    Args:
        model: the base model the adapter was trained on (same module paths).
        directory: holds ``adapter_config.json`` and ``adapter_model.safetensors``.
    Returns:
        The adapted model, with only adapter parameters trainable: ``model`` itself, modified in
        place, for layer adapters (LoRA family, IA3); a wrapper around it for virtual tokens.
    """
    directory = Path(directory)
    config, flat = read_adapter(directory)
    kind = config.get("peft_type")
    if kind in VIRTUAL_TYPES:
        return _load_virtual(model, directory, config, flat)
    if kind not in ("LORA", "IA3"):
        raise ValueError(f"{directory}: peft_type={kind!r}; llmkit loads LORA, IA3, "
                         f"{', '.join(VIRTUAL_TYPES)} adapters")
    grouped = group_by_module(directory, flat)
    check_supported(directory, config)
    for path, tensors in grouped.items():
        try:
            base = model.get_submodule(path)
        except AttributeError:
            raise CheckpointError(f"{directory}: the adapter targets {path}, which this model lacks") from None
        if kind == "IA3":
            wrapper = IA3Linear(base, name_matches(path, config.get("feedforward_modules") or []))
        else:
            a = tensors.get("lora_A.weight", tensors.get("lora_embedding_A"))
            wrapper = wrap_lora(base, a.shape[0], config["lora_alpha"], config.get("lora_dropout", 0.0),
                                config.get("use_rslora", False), "lora_magnitude_vector" in tensors)
        own = dict(wrapper.adapter_parameters())
        if set(own) != set(tensors):
            raise CheckpointError(f"{directory}: {path} has tensors {sorted(tensors)}, expected {sorted(own)}")
        with torch.no_grad():
            for name, t in tensors.items():
                if own[name].shape != t.shape:
                    raise CheckpointError(f"{directory}: {path}.{name} has shape {tuple(t.shape)}, "
                                          f"the model needs {tuple(own[name].shape)}")
                own[name].copy_(t)
        replace_module(model, path, wrapper)
    freeze_all_but_adapters(model)
    return model
