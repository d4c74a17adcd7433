"""`ModelConfig`: one frozen dataclass describing every architecture llmkit builds.

Every component is chosen by a string (``norm="rmsnorm"``, ``rope_scaling="yarn"``,
``attention="mla"``) so a config is plain JSON/YAML. Derived sizes are properties,
never fields mutated after construction, and :meth:`ModelConfig.validate` names
the offending field in every error.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.validate import check_choices

NormType = Literal["rmsnorm", "layernorm"]
NormPlacement = Literal["pre", "post", "sandwich"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"]
PosEmbedding = Literal["none", "sinusoidal", "learned", "rope"]
RopeScaling = Literal["none", "linear", "ntk", "dynamic", "ntk_by_parts", "yarn", "llama3"]
RopeLayout = Literal["half", "interleaved"]
AttentionKind = Literal["mha", "mla"]
AttnImpl = Literal["sdpa", "eager"]
RouterScore = Literal["softmax", "sigmoid"]
TopkMethod = Literal["greedy", "group_limited_greedy", "noaux_tc"]


class ConfigError(ValueError):
    """A config field has an invalid value; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer (LLaMA family and relatives)."""

    # --- sizes ---
    vocab_size: int = 32000  # rows of the embedding / logits
    dim: int = 512  # hidden size (d_model)
    n_layers: int = 8  # decoder blocks
    n_heads: int = 8  # query heads
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA), 1 = MQA, else GQA
    head_dim: int | None = None  # per-head size; None = dim // n_heads
    ffn_dim: int = 1376  # hidden size of the dense MLP
    max_seq_len: int = 2048  # context length the model is built for

    # --- normalisation ---
    norm: NormType = "rmsnorm"  # RMSNorm (LLaMA) or LayerNorm (GPT-2)
    norm_eps: float = 1e-5  # epsilon inside the norm
    norm_bias: bool = True  # LayerNorm only: learn a bias
    norm_placement: NormPlacement = "pre"  # pre-LN (stable), post-LN (original), sandwich (both)
    deepnorm: bool = False  # DeepNet: post-LN with residual x*alpha and init gain beta

    # --- MLP ---
    activation: Activation = "silu"  # non-linearity of the MLP
    gated_mlp: bool = True  # GLU family: act(gate(x)) * up(x) (silu -> SwiGLU, gelu -> GeGLU, sigmoid -> GLU)
    mlp_bias: bool = False  # biases in gate/up/down projections

    # --- positions ---
    pos_embedding: PosEmbedding = "rope"  # how positions enter the model
    rope_theta: float = 10000.0  # RoPE base
    rotary_fraction: float = 1.0  # partial rotary: rotate only this fraction of head_dim
    rope_layout: RopeLayout = "half"  # pair (i, i+d/2) like HF LLaMA, or (2i, 2i+1) like Meta/DeepSeek
    rope_scaling: RopeScaling = "none"  # context-extension method
    rope_factor: float = 1.0  # scaling factor s (target / original context)
    rope_original_max_seq_len: int | None = None  # pre-extension context; None = max_seq_len
    rope_low_freq_factor: float = 1.0  # llama3 scaling
    rope_high_freq_factor: float = 4.0  # llama3 scaling
    rope_beta_fast: float = 32.0  # YaRN / NTK-by-parts ramp boundaries (rotations)
    rope_beta_slow: float = 1.0
    rope_attention_factor: float | None = None  # YaRN temperature on cos/sin; None = 0.1 ln(s) + 1
    rope_mscale: float | None = None  # DeepSeek YaRN variant of the temperature
    rope_mscale_all_dim: float | None = None

    # --- attention ---
    attention: AttentionKind = "mha"  # standard (MHA/GQA/MQA) or DeepSeek multi-head latent attention
    attn_impl: AttnImpl = "sdpa"  # fused torch SDPA or the explicit softmax(QK^T)V
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2)
    o_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # RMSNorm on each head's q and k (Qwen3)
    sliding_window: int | None = None  # attend to at most this many previous tokens (Mistral)
    attn_dropout: float = 0.0  # dropout on attention probabilities
    resid_dropout: float = 0.0  # dropout on each residual branch

    # --- MLA (DeepSeek-V2/V3) ---
    q_lora_rank: int | None = None  # low-rank query compression; None = full q_proj
    kv_lora_rank: int = 512  # width of the cached latent c_kv
    qk_nope_head_dim: int = 128  # per-head query/key dims without position
    qk_rope_head_dim: int = 64  # per-head (shared-key) dims that carry RoPE
    v_head_dim: int = 128  # per-head value dims

    # --- mixture of experts ---
    n_experts: int = 0  # routed experts per MoE layer; 0 = dense model
    n_experts_per_tok: int = 2  # k in top-k routing
    n_shared_experts: int = 0  # always-on experts (DeepSeek)
    moe_ffn_dim: int | None = None  # hidden size of each expert; None = ffn_dim
    first_dense_layers: int = 0  # the first layers keep a dense MLP (DeepSeek first_k_dense_replace)
    router_score: RouterScore = "softmax"  # softmax (Mixtral, DeepSeek-V2) or sigmoid (DeepSeek-V3)
    norm_topk_prob: bool = True  # renormalise the k chosen weights to sum to one
    routed_scaling_factor: float = 1.0  # multiply routed output (DeepSeek)
    topk_method: TopkMethod = "greedy"  # expert selection, incl. DeepSeek's group-limited variants
    n_group: int = 1  # expert groups for group-limited routing
    topk_group: int = 1  # groups kept per token
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss (Switch/Mixtral)

    # --- embeddings, init, bookkeeping ---
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    init_std: float = 0.02  # std of normal init for linear and embedding weights
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    # ----- derived -----
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Dims per head that RoPE rotates (MLA: the decoupled rope part)."""
        if self.attention == "mla":
            return self.qk_rope_head_dim
        return int(self.head_size * self.rotary_fraction)

    @property
    def expert_dim(self) -> int:
        return self.moe_ffn_dim if self.moe_ffn_dim is not None else self.ffn_dim

    @property
    def original_max_seq_len(self) -> int:
        return self.rope_original_max_seq_len or self.max_seq_len

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNet residual scale for a decoder-only stack: (2N)^(1/4)."""
        return (2 * self.n_layers) ** 0.25 if self.deepnorm else 1.0

    @property
    def deepnorm_beta(self) -> float:
        """DeepNet init gain for v/o/MLP weights of a decoder-only stack: (8N)^(-1/4)."""
        return (8 * self.n_layers) ** -0.25 if self.deepnorm else 1.0

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and layer >= self.first_dense_layers

    # ----- validation and serialisation -----
    def validate(self) -> "ModelConfig":
        """Check every field; raise :class:`ConfigError` naming the first bad one. Returns self."""
        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig.{field}={getattr(self, field)!r}: {msg}")

        check_choices(self, ConfigError)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "max_seq_len"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive integer")
        need(self.kv_heads > 0 and self.n_heads % self.kv_heads == 0, "n_kv_heads",
             f"must divide n_heads={self.n_heads}")
        need(self.head_dim is not None or self.dim % self.n_heads == 0, "head_dim",
             f"is None but dim={self.dim} is not divisible by n_heads={self.n_heads}")
        need(self.norm_eps > 0, "norm_eps", "must be > 0")
        need(0.0 < self.rotary_fraction <= 1.0, "rotary_fraction", "must be in (0, 1]")
        if self.pos_embedding == "rope":
            need(self.rotary_dim % 2 == 0 and self.rotary_dim > 0, "rotary_fraction",
                 f"gives an odd or zero rotary dim {self.rotary_dim}")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.rope_scaling == "none" or self.rope_factor >= 1.0, "rope_factor",
             f"must be >= 1 for rope_scaling={self.rope_scaling!r}")
        need(self.rope_high_freq_factor > self.rope_low_freq_factor or self.rope_scaling != "llama3",
             "rope_high_freq_factor", "must exceed rope_low_freq_factor")
        need(self.sliding_window is None or self.sliding_window > 0, "sliding_window", "must be None or > 0")
        need(0.0 <= self.attn_dropout < 1.0, "attn_dropout", "must be in [0, 1)")
        need(0.0 <= self.resid_dropout < 1.0, "resid_dropout", "must be in [0, 1)")
        need(not (self.deepnorm and self.norm_placement != "post"), "deepnorm",
             "requires norm_placement='post' (DeepNet is a post-LN method)")
        if self.attention == "mla":
            need(self.pos_embedding == "rope", "pos_embedding", "MLA needs rope")
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be even")
            need(self.kv_heads == self.n_heads, "n_kv_heads", "MLA has no separate kv heads (leave None)")
        if self.n_experts:
            need(0 < self.n_experts_per_tok <= self.n_experts, "n_experts_per_tok", f"must be in [1, {self.n_experts}]")
            need(self.n_experts % self.n_group == 0, "n_group", f"must divide n_experts={self.n_experts}")
            need(0 < self.topk_group <= self.n_group, "topk_group", f"must be in [1, n_group={self.n_group}]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "ModelConfig":
        p = Path(text_or_path)
        text = p.read_text() if not str(text_or_path).lstrip().startswith("{") and p.exists() else str(text_or_path)
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature sqrt(1/t) = 0.1 * mscale * ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
