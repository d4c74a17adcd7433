"""Block manager properties under random allocate/append/fork/free sequences (hypothesis)."""
import pytest
from hypothesis import given, settings, strategies as st

from llmkit.engine.block_manager import BlockManager
from llmkit.engine.sequence import Request, Sequence
from llmkit.generate import SamplingParams

BS = 4


def new_seq(tokens):
    req = Request("r", None, list(tokens), SamplingParams(), 100)
    seq = Sequence(req, 0, tokens)
    req.seqs.append(seq)
    return seq


def check(bm: BlockManager, live: list[Sequence]):
    refs = [0] * bm.num_blocks
    for seq in live:
        assert len(seq.block_table) == len(set(seq.block_table))  # no block twice in one table
        for b in seq.block_table:
            refs[b] += 1
        assert len(seq.block_table) >= bm.blocks_for(seq.num_tokens)
    for block in bm.blocks:
        assert block.ref_count == refs[block.block_id] >= 0  # no leak, no double free
        assert (block.ref_count == 0) == (block.block_id in bm.free_ids)
    for h, b in bm.cached.items():
        assert bm.blocks[b].hash == h
    for seq in live:  # a computed full block holds exactly this sequence's tokens
        for i in range(seq.num_computed_tokens // BS):
            block = bm.blocks[seq.block_table[i]]
            if block.hash is not None:
                assert block.token_ids == tuple(seq.token_ids[i * BS:(i + 1) * BS])


ops = st.lists(st.tuples(st.sampled_from(["alloc", "step", "fork", "free"]), st.integers(0, 1000),
                         st.lists(st.integers(0, 2), min_size=1, max_size=14)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans())
def test_random_operations_keep_the_books(operations, caching):
    bm = BlockManager(24, BS, enable_prefix_caching=caching)
    live: list[Sequence] = []
    for op, pick, tokens in operations:
        if op == "alloc":
            seq = new_seq(tokens)  # a 3-letter alphabet: prefixes repeat, so cache hits happen
            if bm.can_allocate(seq):
                free = bm.num_free_blocks
                bm.allocate(seq)
                assert seq.num_computed_tokens < seq.num_tokens  # the last token is always computed
                assert bm.num_free_blocks <= free
                live.append(seq)
        elif live:
            seq = live[pick % len(live)]
            if op == "step":  # the model computed everything; one token is sampled
                seq.num_computed_tokens = seq.num_tokens
                bm.mark_computed(seq, seq.num_computed_tokens)
                seq.token_ids.append(tokens[0])
                if bm.can_append(seq, seq.num_tokens):
                    copy = bm.append_slots(seq, seq.num_tokens)
                    if copy:
                        src, dst = copy
                        assert src != dst and bm.blocks[dst].ref_count == 1
                else:
                    seq.token_ids.pop()
            elif op == "fork":
                child = Sequence(seq.request, 1, seq.token_ids)
                bm.fork(seq, child)
                live.append(child)
            else:
                bm.free(seq)
                live.remove(seq)
        check(bm, live)
    for seq in live:
        bm.free(seq)
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_cached_prefix_is_reused_only_when_tokens_match():
    bm = BlockManager(16, BS)
    a = new_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(a)
    a.num_computed_tokens = a.num_tokens
    bm.mark_computed(a, a.num_computed_tokens)
    b = new_seq([1, 2, 3, 4, 5, 6, 7, 8, 1, 2])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_computed_tokens == 8
    c = new_seq([1, 2, 3, 4, 5, 6, 7, 0, 1])  # differs inside the second block
    bm.allocate(c)
    assert c.block_table[0] == a.block_table[0] and c.block_table[1] != a.block_table[1]
    assert c.num_computed_tokens == 4
    # a hash collision cannot alias: a registered block whose tokens differ is not reused
    h = bm.blocks[a.block_table[0]].hash
    bm.blocks[a.block_table[0]].token_ids = (9, 9, 9, 9)
    d = new_seq([1, 2, 3, 4, 5])
    bm.allocate(d)
    assert d.num_computed_tokens == 0 and bm.cached[h] == a.block_table[0]


def test_freed_cached_blocks_are_reused_until_evicted_oldest_first():
    bm = BlockManager(4, BS)
    a = new_seq([1, 2, 3, 4, 5])
    bm.allocate(a)
    a.num_computed_tokens = 5
    bm.mark_computed(a, a.num_computed_tokens)
    first = a.block_table[0]
    bm.free(a)
    b = new_seq([1, 2, 3, 4, 7])
    bm.allocate(b)  # hit, though the block was free
    assert b.block_table[0] == first and b.num_computed_tokens == 4
    bm.free(b)
    c = new_seq(list(range(10, 26)))  # needs every block: the cached one is evicted
    bm.allocate(c)
    assert first in c.block_table and first not in bm.cached.values()  # evicted: its registration is gone


def test_too_few_blocks_is_refused_not_corrupted():
    bm = BlockManager(2, BS)
    seq = new_seq(list(range(9)))
    assert not bm.can_allocate(seq)
    with pytest.raises(RuntimeError, match="not enough free blocks"):
        bm.allocate(seq)
    assert bm.num_free_blocks == 2 and seq.block_table == []
