"""``llmkit info PATH|PRESET``: what a checkpoint or preset is, without loading its weights."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

POSITIONALS = {"path": dict(nargs="?", help="HF model directory, .gguf file, model name or preset")}


@dataclass
class Args:
    path: str = field(default="", metadata={"help": "HF model directory, .gguf file, model name or preset"})
    json: bool = field(default=False, metadata={"help": "print the config as JSON"})


def describe(path_or_name: str):
    """(ModelConfig, source description) for a directory, GGUF file, pulled model name or preset."""
    from llmkit.presets import PRESETS

    if path_or_name in PRESETS:
        return PRESETS[path_or_name], f"preset {path_or_name}"
    from llmkit.io.pull import resolve_model

    path = resolve_model(path_or_name)
    if Path(path).suffix == ".gguf":
        from llmkit.io.gguf import read_gguf_config

        return read_gguf_config(path), f"GGUF file {path}"
    from llmkit.io.hf import read_hf_config

    cfg, raw = read_hf_config(Path(path))
    return cfg, f"{raw.get('model_type')} checkpoint {path}"


def run(args: Args) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.model import count_parameters

    if not args.path:
        raise UsageError("give a checkpoint directory, .gguf file, model name or preset")
    cfg, source = describe(args.path)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    n = count_parameters(cfg)
    attn = "MLA" if cfg.attention == "mla" else ("MHA" if cfg.kv_heads == cfg.n_heads else
                                                  "MQA" if cfg.kv_heads == 1 else f"GQA {cfg.n_heads}/{cfg.kv_heads}")
    rows = [
        ("source", source),
        ("parameters", f"{n:,} ({n / 1e6:.1f} M)"),
        ("layers x dim", f"{cfg.n_layers} x {cfg.dim} (ffn {cfg.ffn_dim}, head_dim {cfg.head_size})"),
        ("attention", f"{attn}, {cfg.attn_impl}" + (f", window {cfg.sliding_window}" if cfg.sliding_window else "")),
        ("positions", cfg.pos_embedding + (f" theta={cfg.rope_theta:g} scaling={cfg.rope_scaling}" if cfg.pos_embedding == "rope" else "")),
        ("norm / mlp", f"{cfg.norm} ({cfg.norm_placement}), {'gated ' if cfg.gated_mlp else ''}{cfg.activation}"),
        ("experts", f"{cfg.n_experts} (top-{cfg.n_experts_per_tok}, {cfg.n_shared_experts} shared)" if cfg.n_experts else "dense"),
        ("vocab / context", f"{cfg.vocab_size} / {cfg.max_seq_len}"),
        ("tied embeddings", str(cfg.tie_word_embeddings)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
