"""Activation memory of a training step: the bytes autograd keeps for backward, per token, for our blocks.

The method is Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", arXiv:2205.05198), who find 34·s·b·h + 5·a·s²·b
bytes per GPT layer by listing every tensor a layer saves. Listing the tensors
that llmkit's own modules save (checked tensor by tensor against a live-tensor
count, see ``measure.py``) changes the terms:

- norms compute in fp32, so each keeps an fp32 copy of its input (4 bytes per
  value, whatever the model dtype); RMSNorm also keeps x̂ for its weight's gradient;
- attention runs through fused SDPA (flash / memory-efficient kernels), which
  keeps q, k, v, the output and an fp32 log-sum-exp per head and recomputes the
  T×T scores in backward: no 5·a·s² term. k and v are ``n_kv_heads`` wide (GQA;
  the kernels broadcast them); MLA keeps the full-width q/k it builds and the
  ``kv_b_proj`` output its v is a view of. ``attn_impl="eager"`` keeps fp32
  probabilities, 4·H·T bytes per token: the quadratic term comes back;
- RoPE keeps only cos/sin (shared, not counted): the rotated q/k are what SDPA keeps;
- the gated MLP (SwiGLU) keeps gate, act(gate), up and their product: 4·ffn values,
  where GELU's 4h MLP kept 2·4h; MoE keeps that per routed slot (k per token),
  plus the slot's expert output and weighted output;
- a linear whose weight is frozen keeps no input (its input gradient needs only
  the weight), so LoRA on the attention linears drops the MLP's and lm_head's inputs
  and the norms' x̂, and adds each adapter's rank-r intermediate;
- the loss head keeps the logits (held by the caller), the fp32 log-softmax of
  cross-entropy on ``logits.float()``, and at the start of backward adds two
  more fp32 (T, V) gradients: 14 bytes per vocabulary entry per token, which
  for Llama 3's 128K vocabulary is as much as nine of its layers.

Activation checkpointing is full per-block recomputation (``torch.utils.checkpoint``
around each block): each block keeps only its input, and one block's activations
exist again while it is recomputed. Not counted: the cos/sin tables and masks
shared by all layers, dropout on attention probabilities, per-op workspace and
allocator fragmentation. Residual dropout adds a 1-byte mask per value.
"""
from __future__ import annotations

from llmkit.config import ModelConfig
from llmkit.estimate.params import attention_linears


def _norm(width: int, act_bytes: int, keeps_xhat: bool) -> int:
    """A norm: the fp32 copy of its input (the input itself in fp32), plus x̂ when its weight trains."""
    return 4 * width + (act_bytes * width if keeps_xhat else 0)


def _mlp(cfg: ModelConfig, hidden: int, act_bytes: int, full: bool) -> int:
    """A dense or expert MLP: act's input, and for GLU act's output and up; with trainable weights, the inputs."""
    kept = 3 * hidden if cfg.gated_mlp else hidden
    if full:
        kept += cfg.dim + hidden  # input of gate/up, input of down
    return act_bytes * kept


def _attention(cfg: ModelConfig, seq: int, act_bytes: int, full: bool, lora_rank: int) -> int:
    """One attention module, fed by a norm output that its (trainable or adapted) projections keep."""
    a, h = act_bytes, cfg.n_heads
    kept = a * cfg.dim  # the normed input, kept by q/k/v (or by the LoRA A matrices)
    if cfg.attention == "mla":
        qk = h * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        q_width, k_width, out_width = qk, qk, h * cfg.v_head_dim
        v_width = h * (cfg.qk_nope_head_dim + cfg.v_head_dim)  # v is a view of the whole kv_b_proj output
        if cfg.q_lora_rank is not None:
            kept += _norm(cfg.q_lora_rank, a, full) + a * cfg.q_lora_rank  # q_a_layernorm, q_b_proj's input
        kept += _norm(cfg.kv_lora_rank, a, full) + a * cfg.kv_lora_rank  # kv_a_layernorm, kv_b_proj's input
    else:
        q_width = out_width = h * cfg.head_size
        k_width = v_width = cfg.kv_heads * cfg.head_size
        if cfg.qk_norm:
            kept += _norm(q_width, a, full) + _norm(k_width, a, full)
        if cfg.attn_impl == "eager":  # k, v repeated to every query head before the matmuls
            k_width = v_width = q_width
    kept += a * (q_width + k_width + v_width + out_width)  # eager: o_proj keeps a re-laid-out copy of the output
    if cfg.pos_embedding == "rope" and a != 4:
        kept += 4 * a * cfg.rotary_dim  # cos and sin cast to the model dtype, for q and for k
    if cfg.attn_impl == "eager":
        kept += h * seq * (4 + (a if a != 4 else 0))  # fp32 softmax, plus its cast for probs @ v
    else:
        kept += 4 * h  # fp32 log-sum-exp per head
    if not full:
        kept += a * lora_rank * len(attention_linears(cfg))  # each adapter's A x, kept by B
    return kept


def _ffn(cfg: ModelConfig, layer: int, act_bytes: int, full: bool) -> int:
    if not cfg.is_moe_layer(layer):
        return _mlp(cfg, cfg.ffn_dim, act_bytes, full)
    k, d = cfg.n_experts_per_tok, cfg.dim
    kept = 4 * cfg.n_experts + (4 * d if full else 0)  # fp32 router probabilities; the router's fp32 input
    # per routed slot: the expert's output (kept by the weighting) and the weighted output (kept by index_add_)
    kept += k * (2 * act_bytes * d + _mlp(cfg, cfg.expert_dim, act_bytes, full))
    if cfg.n_shared_experts:
        kept += _mlp(cfg, cfg.expert_dim * cfg.n_shared_experts, act_bytes, full)
    return kept


def layer_bytes_per_token(cfg: ModelConfig, layer: int, seq: int, act_bytes: int,
                          lora_rank: int | None = None) -> int:
    """Bytes one decoder block keeps for backward, per token.

    Args:
        cfg: the model.
        layer: block index (dense or MoE feed-forward).
        seq: sequence length (only eager attention depends on it).
        act_bytes: bytes per value of the model dtype (4 fp32, 2 bf16).
        lora_rank: None trains every weight; a rank trains only LoRA adapters on the attention linears.
    Returns:
        bytes per token.
    """
    full = lora_rank is None
    n_norms = 4 if cfg.norm_placement == "sandwich" else 2
    kept = n_norms * _norm(cfg.dim, act_bytes, full and cfg.norm == "rmsnorm")
    kept += _attention(cfg, seq, act_bytes, full, lora_rank or 0) + _ffn(cfg, layer, act_bytes, full)
    if cfg.resid_dropout:
        kept += 2 * cfg.dim  # bool masks of the two residual dropouts
    return kept


def _loss_head(cfg: ModelConfig, act_bytes: int, full: bool) -> int:
    """Final norm, lm_head's input, fp32 log-softmax, and the fp32 gradients of log-probs and logits."""
    kept = act_bytes * cfg.dim if full else 0  # lm_head's input
    if cfg.norm_placement != "post":
        kept += _norm(cfg.dim, act_bytes, full and cfg.norm == "rmsnorm")
    return kept + 4 * cfg.vocab_size + 8 * cfg.vocab_size


def activation_bytes(cfg: ModelConfig, batch: int, seq: int, act_bytes: int, lora_rank: int | None = None,
                     checkpointing: bool = False) -> int:
    """Peak bytes of activations and loss gradients in a training step.

    Args:
        cfg: the model.
        batch: sequences per step.
        seq: tokens per sequence.
        act_bytes: bytes per value of the model dtype (4 fp32, 2 bf16).
        lora_rank: None trains every weight; a rank trains only LoRA adapters on the attention linears.
        checkpointing: recompute each block in backward, keeping only block inputs.
    Returns:
        bytes.
    """
    layers = [layer_bytes_per_token(cfg, i, seq, act_bytes, lora_rank) for i in range(cfg.n_layers)]
    head = _loss_head(cfg, act_bytes, lora_rank is None)
    if checkpointing:  # block inputs, then either the loss head's backward or one block's recompute
        kept = cfg.n_layers * act_bytes * cfg.dim + max(head, max(layers))
    else:
        kept = sum(layers) + head
    logits = act_bytes * cfg.vocab_size  # held by the caller until the step ends
    return batch * seq * (kept + logits)
