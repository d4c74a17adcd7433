"""Fixed-size KV blocks: allocation, reference counts, prefix caching and copy-on-write. Plain Python.

The pool holds ``num_blocks`` blocks of ``block_size`` token slots. A sequence
owns an ordered block table; a block may be shared by several sequences (a
cached prompt prefix, or the continuations of one prompt after a fork), so each
block counts its owners and returns to the free list when the count reaches 0.

Prefix caching (vLLM's automatic prefix caching): once a *full* block's K/V
are computed (or scheduled to be, in the step being planned), it is registered under a hash chained over every token
from the start of the sequence (``hash((parent_hash, tokens))``), so equal
hashes mean equal prefixes (a request under a LoRA adapter starts its chain
from the adapter's identity, so adapters never share blocks). A new sequence
walks its prompt block by block and takes every registered block whose hash matches and whose tokens compare equal
(the check guards against hash collisions). Freed blocks keep their
registration and sit in an LRU free list: they are reused as cache hits until
the allocator needs them for new data, oldest-freed first. The block holding
a prompt's last token is never taken from the cache, so at least one token is
computed and gives the next-token logits.

Writes only ever go to the slots at or after ``num_computed_tokens``, i.e. into
a sequence's last, partly filled block or new ones. Only a fork can make that
block shared; appending to it then copies it first (copy-on-write) and returns
the (source, destination) pair for the model runner to copy in the pool.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from llmkit.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None  # set once the block is full and computed (then it is cacheable)
        self.token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, tokens: Seq[int]) -> int:
    """The hash of a full block given its predecessor's hash: equal hashes <=> (almost surely) equal prefixes."""
    return hash((parent, tuple(tokens)))


def chain_root(seq: Sequence) -> int | None:
    """The hash a sequence's chain starts from: its LoRA adapter's identity (None for the base model), so a
    block computed under one adapter is never reused under another or the base (its K/V differ)."""
    return None if seq.lora_name is None else hash(("lora", seq.lora_name))


class BlockManager:
    """Blocks of one KV pool.

    Args:
        num_blocks: blocks in the pool.
        block_size: token slots per block.
        enable_prefix_caching: register computed full blocks and reuse them across sequences.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one slot, got {num_blocks} x {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # ref 0, LRU first
        self.cached: dict[int, int] = {}  # hash -> block id
        self.cache_queries = 0  # full prompt blocks looked up ...
        self.cache_hits = 0  # ... and found

    # ----- accounting -----
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.cache_queries if self.cache_queries else 0.0

    # ----- allocation -----
    def _cached_prefix(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Registered blocks matching the sequence's leading full blocks (never the one holding its last
        token), and their hashes."""
        if not self.enable_prefix_caching:
            return [], []
        hits, hashes, parent = [], [], chain_root(seq)
        for i in range((seq.num_tokens - 1) // self.block_size):
            tokens = seq.token_ids[i * self.block_size:(i + 1) * self.block_size]
            parent = chain_hash(parent, tokens)
            block_id = self.cached.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tuple(tokens):
                break
            hits.append(block_id)
            hashes.append(parent)
        return hits, hashes

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether the blocks for all of ``seq``'s tokens can be had now (cache hits need no free block,
        unless they sit in the free list themselves)."""
        hits, _ = self._cached_prefix(seq)
        fresh = self.blocks_for(seq.num_tokens) - len(hits)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return fresh + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing its cached prefix.

        Sets ``seq.num_computed_tokens`` to the tokens found in the cache.
        """
        if seq.block_table:
            raise RuntimeError(f"{seq} already holds blocks")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free blocks for {seq}")
        hits, hashes = self._cached_prefix(seq)
        if self.enable_prefix_caching:
            self.cache_queries += (seq.num_tokens - 1) // self.block_size
            self.cache_hits += len(hits)
        for block_id in hits:
            self._take(block_id)
        seq.block_table = hits + [self._new_block() for _ in range(self.blocks_for(seq.num_tokens) - len(hits))]
        seq.block_hashes = hashes
        seq.num_computed_tokens = len(hits) * self.block_size

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_ids[block_id]
        block.ref_count += 1

    def _new_block(self) -> int:
        """The least recently freed block, its old registration dropped."""
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether ``seq`` can grow to ``num_tokens`` slots (copy-on-write of a shared last block included)."""
        need = max(0, self.blocks_for(num_tokens) - len(seq.block_table))
        return need + self._needs_copy(seq) <= self.num_free_blocks

    def _needs_copy(self, seq: Sequence) -> bool:
        i = seq.num_computed_tokens // self.block_size
        return i < len(seq.block_table) and self.blocks[seq.block_table[i]].ref_count > 1

    def append_slots(self, seq: Sequence, num_tokens: int) -> tuple[int, int] | None:
        """Make room for ``num_tokens`` tokens in ``seq``'s table.

        Returns:
            (source, destination) blocks to copy in the pool if the block about to be written was
            shared and has been replaced by a private copy, else None.
        """
        if not self.can_append(seq, num_tokens):
            raise RuntimeError(f"not enough free blocks to grow {seq} to {num_tokens} tokens")
        copy = None
        if self._needs_copy(seq):
            i = seq.num_computed_tokens // self.block_size
            src = seq.block_table[i]
            self.blocks[src].ref_count -= 1  # still > 0: another sequence holds it
            seq.block_table[i] = self._new_block()
            copy = (src, seq.block_table[i])
        while len(seq.block_table) < self.blocks_for(num_tokens):
            seq.block_table.append(self._new_block())
        return copy

    def mark_computed(self, seq: Sequence, num_tokens: int) -> None:
        """Register the sequence's full blocks among its first ``num_tokens`` tokens, so later prompts reuse them.

        The scheduler calls this when it schedules a step, with the tokens the step will have computed:
        a prompt admitted later in the same step may then take those blocks at once, because every
        attention layer writes the whole step's K/V to the pool before any sequence reads it.
        ``seq.block_hashes`` remembers the chain so far, so each block is hashed once.
        """
        if not self.enable_prefix_caching:
            return
        hashes, bs = seq.block_hashes, self.block_size
        for i in range(len(hashes), min(num_tokens, seq.num_tokens) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(hashes[-1] if hashes else chain_root(seq), tokens)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash, block.token_ids = h, tokens
                self.cached.setdefault(h, block.block_id)
            hashes.append(h)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares all of ``parent``'s blocks (and computed tokens); writes copy on demand."""
        for block_id in parent.block_table:
            self._take(block_id)
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks; its tail goes to the free list first, so cached prefixes live longest."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block_id} freed twice")
            if block.ref_count == 0:
                self.free_ids[block_id] = None
        seq.block_table, seq.block_hashes = [], []
