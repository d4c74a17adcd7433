"""Sequence parallelism: one sequence's attention split over the ranks of a process group.

- ``ring``: ring attention, K/V blocks passed around the ranks with an online-softmax merge.
- ``ulysses``: DeepSpeed-Ulysses, all-to-all from sequence shards to head shards and back.
- ``model``: a whole CausalLM run sequence-parallel (``sequence_parallel``, ``shard_sequence``,
  ``shard_batch``, ``chunk_positions``); the trainer uses it (``TrainConfig.sequence_parallel``).
- ``memory``: ``PeakMemory``, the peak bytes of live tensors, to show memory per rank falls.

Both take and return this rank's contiguous chunk of the sequence, (B, H, T/P, D).
"""
from llmkit.parallel.memory import PeakMemory
from llmkit.parallel.model import (check_sequence_parallel, chunk_positions, sequence_parallel, shard_batch,
                                   shard_sequence)
from llmkit.parallel.ring import ring_attention
from llmkit.parallel.ulysses import ulysses_attention

__all__ = ["PeakMemory", "check_sequence_parallel", "chunk_positions", "sequence_parallel", "shard_batch",
           "shard_sequence", "ring_attention", "ulysses_attention"]
