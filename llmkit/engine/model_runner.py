"""Turns a step's scheduled sequences into one flattened model call over the paged KV pool.

The runner owns the pool (one :class:`~llmkit.model.paged.PagedKVCache` per
layer, or MLA's latent pools), allocated once as ``num_blocks`` blocks. For
a step it lays the sequences' new tokens end to end in one row (decodes
first, so attention can batch them), with each token's position, the pool
slot its K/V go to, and each sequence's block table and context length, and
asks the model for logits only where a token will be chosen: the last
position of a sequence whose known tokens are all fed, or every position of a
speculative verification.

Steps that only decode (one token per sequence, the common case under load)
can run a compiled function (``compile=True``; :func:`llmkit.generate.compile.compile_step`:
inductor with the batch-1 linear rewrite and the C++ attention kernel on CPU,
CUDA graphs on CUDA). Its shapes must be static, so the batch is padded to the
next of ``BATCH_BUCKETS`` and block tables are always as wide as the model's
context; padded rows write their K/V to one spare block that no sequence owns.
Each bucket compiles once, on first use or in :meth:`ModelRunner.warmup`;
``compile_max_batch`` limits compilation to the small buckets (on CPU the
compiled step pays at batch 1, where per-op overhead dominates, and not at 64,
where the GEMMs and the attention kernel do). On CPU those steps stream the
weights at the memory's bandwidth, so the runner moves them onto huge pages
first (:mod:`llmkit.generate.huge_pages`).

Multi-LoRA: a feed names its adapter slot; the runner hands the step's
per-token slots to the model's :class:`~llmkit.peft.multi_lora.MultiLoRALinear`
layers through ``lora_mapping`` for the duration of the forward (steps with
an adapter run eager).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence as Seq
from typing import NamedTuple

import torch

from llmkit.generate import decode_attention, prefill_attention
from llmkit.generate.compile import compile_step
from llmkit.generate.huge_pages import move_to_huge_pages
from llmkit.generate.packed import PackedLinear

from llmkit.model import CausalLM
from llmkit.model.metadata import PagedMetadata
from llmkit.model.paged import PagedKVCache, PagedLatentCache
from llmkit.quant.kv import kv_storage_dtype
from llmkit.peft.multi_lora import LoRAMapping



class Feed(NamedTuple):
    """One sequence's part of a step: ``tokens`` go to the slots from ``start`` on (which must be
    allocated, every earlier slot cached); logits come back for the last ``wanted`` of them.
    ``positions`` (RoPE) default to the slot indices; ``mask`` (T, T) replaces causal attention
    among the tokens (lookahead decoding's branches)."""

    table: list[int]
    start: int
    tokens: list[int]
    wanted: int
    positions: list[int] | None = None
    mask: torch.Tensor | None = None
    lora: int = -1  # the LoRA adapter slot of these tokens (llmkit.peft.multi_lora); -1 = the base model


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def decode_step(model: CausalLM, caches: list, kernel: Callable[..., torch.Tensor] | None, ids: torch.Tensor,
                positions: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """One token for each of B sequences (the function that gets compiled): ids (1, B) -> logits (B, V) float32."""
    b = ids.shape[1]
    paged = PagedMetadata(caches, slots, tables, lens, [1] * b, None, b, decode_kernel=kernel)
    return model(ids, position_ids=positions, paged=paged)[0].float()


def block_bytes(model: CausalLM, block_size: int, dtype: torch.dtype, kv_cache_dtype: str | None = None) -> int:
    """Bytes one block takes in the pools of every layer of ``model`` (quantized pools: codes and scales).

    Raises:
        ValueError: an unknown ``kv_cache_dtype``, or a quantized one for MLA (its latent pool is not quantized).
    """
    cfg = model.cfg
    if cfg.attention == "mla":
        if kv_storage_dtype(kv_cache_dtype) is not None:
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r}: MLA's latent cache is not quantized; use auto")
        return cfg.n_layers * block_size * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype.itemsize
    slot = PagedKVCache.slot_bytes(cfg.kv_heads, cfg.head_size, cfg.head_size, dtype, kv_cache_dtype)
    return cfg.n_layers * block_size * slot


class ModelRunner:
    """The model plus its paged KV pool.

    Args:
        model: a :class:`CausalLM` in eval mode.
        num_blocks: blocks in the pool (one more is allocated: the compiled step's padding writes there).
        block_size: token slots per block.
        compile: compile decode-only steps.
        compile_max_batch: compile only steps of at most this many sequences (rounded up to a bucket);
            larger ones run eager.
        kv_cache_dtype: None/"auto" (pools in the model's dtype), "int8" or "fp8" (:mod:`llmkit.quant.kv`).
        prepack: run eager steps on oneDNN-prepacked linear weights (:mod:`llmkit.generate.packed`; a second
            copy of them); None = on the CPU.
    """

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, compile: bool = False,
                 kv_cache_dtype: str | None = None, compile_max_batch: int = BATCH_BUCKETS[-1],
                 prepack: bool | None = None):
        if compile_max_batch < 1:
            raise ValueError(f"compile_max_batch must be >= 1, got {compile_max_batch}")
        block_bytes(model, block_size, model.dtype, kv_cache_dtype)  # refuses a bad or unsupported kv_cache_dtype
        cfg = model.cfg
        self.model, self.block_size = model, block_size
        self.device, dtype = model.device, model.dtype
        total = num_blocks + 1
        if cfg.attention == "mla":
            self.caches = [PagedLatentCache(total, block_size, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype,
                                            self.device) for _ in range(cfg.n_layers)]
        else:
            self.caches = [PagedKVCache(total, block_size, cfg.kv_heads, cfg.head_size, cfg.head_size, dtype,
                                        self.device, kv_cache_dtype) for _ in range(cfg.n_layers)]
        self.spare_slot = num_blocks * block_size
        self.table_width = -(-cfg.max_seq_len // block_size) + 1
        top = next((b for b in BATCH_BUCKETS if b >= compile_max_batch), BATCH_BUCKETS[-1])
        self.compiled_buckets = tuple(b for b in BATCH_BUCKETS if b <= top) if compile else ()
        if self.compiled_buckets and self.device.type == "cpu":
            move_to_huge_pages(model)
        # the C++ decode kernel on CPU (built once per machine); None elsewhere or without a compiler
        self.kernel = (decode_attention.paged_decode_attention
                       if self.device.type == "cpu" and decode_attention.load() else None)
        # the C++ prompt-attention kernel where this CPU and the model's heads take it
        self.prefill_kernel = (prefill_attention.paged_prefill_attention
                               if self.device.type == "cpu" and cfg.attention != "mla"
                               and prefill_attention.supported(dtype, cfg.head_size, cfg.head_size) else None)
        self.steps: dict[int, Callable[..., torch.Tensor]] = {}  # batch bucket -> compiled decode step
        # batch bucket -> (its block tables, the table each row holds) for the compiled steps
        self.tables: dict[int, tuple[torch.Tensor, list[list[int]]]] = {}
        self.lora_mapping = LoRAMapping()  # each step's per-token adapter slots, read by MultiLoRALinear layers
        if prepack is None:
            prepack = self.device.type == "cpu"
        self.packed = PackedLinear(model) if prepack else contextlib.nullcontext()

    def copy_blocks(self, copies: Seq[tuple[int, int]]) -> None:
        """Copy-on-write: block ``src``'s slots to block ``dst`` in every layer's pools."""
        for src, dst in copies:
            for cache in self.caches:
                for pool in cache.tensors():
                    pool[dst].copy_(pool[src])

    @torch.no_grad()
    def run(self, feeds: Seq[Feed]) -> list[torch.Tensor]:
        """One forward over every feed.

        Args:
            feeds: what each sequence feeds (see :class:`Feed`).
        Returns:
            Per feed, (logits wanted, V) float32 logits, in the order of ``feeds``.
        """
        if (self.compiled_buckets and len(feeds) <= self.compiled_buckets[-1]
                and all(len(f.tokens) == f.wanted == 1 and f.lora < 0 for f in feeds)):
            return self._run_compiled(feeds)
        order = sorted(range(len(feeds)), key=lambda i: len(feeds[i].tokens) != 1)  # decodes first
        bs = self.block_size
        ids, positions, slots, tables, lens, qlens, keep, masks, loras = [], [], [], [], [], [], [], {}, []
        for i in order:
            table, start, tokens, wanted, pos, mask, lora = feeds[i]
            if mask is not None:
                masks[len(tables)] = mask
            ids += tokens
            span = range(start, start + len(tokens))
            positions += span if pos is None else pos
            slots += [table[p // bs] * bs + p % bs for p in span]
            tables.append(table)
            lens.append(start + len(tokens))
            qlens.append(len(tokens))
            keep += range(len(ids) - wanted, len(ids))
            loras += [lora] * len(tokens)
        width = max(map(len, tables))
        table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        dev = self.device
        paged = PagedMetadata(self.caches, torch.tensor(slots, device=dev), table_tensor.to(dev),
                              torch.tensor(lens, dtype=torch.int32, device=dev), qlens, lens,
                              sum(1 for q in qlens if q == 1), masks, self.kernel, self.prefill_kernel)
        with self.lora_mapping.use(loras, dev), self.packed:
            logits = self.model(torch.tensor([ids], device=dev), position_ids=torch.tensor([positions], device=dev),
                                paged=paged, logits_indices=torch.tensor(keep, dtype=torch.long, device=dev))[0].float()
        out: list[torch.Tensor] = [None] * len(feeds)  # type: ignore[list-item]
        row = 0
        for i in order:
            wanted = feeds[i].wanted
            out[i] = logits[row:row + wanted]
            row += wanted
        return out

    @torch.no_grad()
    def warmup(self) -> None:
        """Compile every bucket's decode step now (each runs once on padding rows), so that no request waits for it."""
        for bucket in self.compiled_buckets:
            self._run_compiled([], bucket)

    def _bucket_tables(self, bucket: int, tables: list[list[int]]) -> torch.Tensor:
        """The bucket's (bucket, table_width) block-table tensor holding ``tables`` in its first rows.

        The tensor is kept between steps and a row is rewritten only when its table changed (a decoding
        sequence gains a block every ``block_size`` steps): building it afresh took ~75 us of a ~12 ms
        batch-1 step. Entries past a row's table (and padding rows) keep stale block ids, which are valid
        indices that nothing reads: attention stops at each row's context length.
        """
        if bucket not in self.tables:
            self.tables[bucket] = torch.zeros(bucket, self.table_width, dtype=torch.int32), [[] for _ in range(bucket)]
        tensor, written = self.tables[bucket]
        for i, table in enumerate(tables):
            if written[i] != table:
                tensor[i, :len(table)] = torch.tensor(table, dtype=torch.int32)
                written[i] = list(table)
        return tensor

    def _run_compiled(self, feeds: Seq[Feed], bucket: int | None = None) -> list[torch.Tensor]:
        """A decode-only step through the compiled function of its batch bucket (default: the smallest that fits)."""
        b = len(feeds)
        bucket = bucket or next(size for size in BATCH_BUCKETS if size >= b)
        bs, pad = self.block_size, bucket - b
        positions = [f.start for f in feeds] + [0] * pad
        slots = [f.table[p // bs] * bs + p % bs for f, p in zip(feeds, positions)]
        tables = self._bucket_tables(bucket, [f.table for f in feeds])
        dev = self.device
        step = self.steps.get(bucket)
        if step is None:
            step = self.steps[bucket] = compile_step(decode_step, dev)
        logits = step(self.model, self.caches, self.kernel, torch.tensor([[f.tokens[0] for f in feeds] + [0] * pad], device=dev),
                      torch.tensor([positions], device=dev),
                      torch.tensor(slots + [self.spare_slot] * pad, device=dev), tables.to(dev),
                      torch.tensor([p + 1 for p in positions], dtype=torch.int32, device=dev))
        return [logits[i:i + 1] for i in range(b)]
