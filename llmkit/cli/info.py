"""``llmkit info SPEC``: what a checkpoint or preset is, without loading its weights."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from llmkit.io.resolve import ACCEPTED

POSITIONALS = {"path": dict(nargs="?", help=ACCEPTED)}


@dataclass
class Args:
    path: str = field(default="", metadata={"help": ACCEPTED})
    json: bool = field(default=False, metadata={"help": "print the config as JSON"})


def run(args: Args) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.estimate.params import count_params
    from llmkit.io import resolve_config
    from llmkit.presets import PUBLISHED_PARAMS

    if not args.path:
        raise UsageError(f"give {ACCEPTED}")
    source = resolve_config(args.path)
    cfg = source.config
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    n = count_params(cfg).total
    published = PUBLISHED_PARAMS.get(source.name) if source.kind == "preset" else None
    attn = "MLA" if cfg.attention == "mla" else ("MHA" if cfg.kv_heads == cfg.n_heads else
                                                  "MQA" if cfg.kv_heads == 1 else f"GQA {cfg.n_heads}/{cfg.kv_heads}")
    rows = [
        ("source", source.description),
        ("parameters", f"{n:,} ({n / 1e6:.1f} M)" + (f", published {published:,}" if published else "")),
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
