"""Fixtures of the trainer tests.

Torch runs single-threaded here: the CI machine's cores are shared, and
OpenMP threads spinning against other processes make small ops many times
slower (single-threaded CPU kernels are also deterministic, which the resume
tests rely on anyway).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import write_byte_shards


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def byte_shards(tmp_path_factory) -> Path:
    """``root/train`` and ``root/val`` byte-level shard directories."""
    root = tmp_path_factory.mktemp("shards")
    write_byte_shards(root / "train", n_docs=60, seed=0)
    write_byte_shards(root / "val", n_docs=10, seed=1)
    return root
