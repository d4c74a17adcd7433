"""Token shards and the packed loader: layout, determinism, exact resume, DDP slices, masking."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmkit.data.document import Document
from llmkit.data.loader import IGNORE_INDEX, PackedLoader
from llmkit.data.shards import read_manifest, write_shards

EOS = 256


def encode(text: str) -> list[int]:
    return list(text.encode())


def make_docs(n: int = 40, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    return [Document(str(i), "".join(rng.choice(list("abcdefgh \n"), int(rng.integers(5, 120)))))
            for i in range(n)]


@pytest.fixture
def shard_dir(tmp_path):
    write_shards(make_docs(), encode, tmp_path / "shards", eos_id=EOS, vocab_size=257, shard_tokens=500)
    return tmp_path / "shards"


def stream(shard_dir) -> np.ndarray:
    manifest = read_manifest(shard_dir)
    return np.concatenate([np.load(shard_dir / s["file"]) for s in manifest["shards"]])


def test_write_shards_layout_and_manifest(shard_dir):
    docs = make_docs()
    expected = np.concatenate([encode(d.text) + [EOS] for d in docs])
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 257 and manifest["eos_id"] == EOS
    assert manifest["num_docs"] == 40 and manifest["num_tokens"] == len(expected)
    assert [s["tokens"] for s in manifest["shards"][:-1]] == [500] * (len(manifest["shards"]) - 1)
    assert len(manifest["shards"]) == -(-len(expected) // 500)
    assert np.load(shard_dir / "shard_00000.npy").dtype == np.uint16
    assert np.array_equal(stream(shard_dir), expected)


def test_manifest_counts_utf8_bytes_not_characters(tmp_path):
    docs = [Document("a", "café"), Document("b", "naïve ☃")]  # 5 and 10 bytes; EOS counts none
    manifest = write_shards(docs, encode, tmp_path, eos_id=EOS, vocab_size=257)
    assert manifest["num_bytes"] == 15 == read_manifest(tmp_path)["num_bytes"]
    assert manifest["num_tokens"] == 15 + 2


def test_write_shards_dtype_errors_and_rewrite(tmp_path):
    out = tmp_path / "s"
    write_shards(make_docs(), encode, out, eos_id=EOS, vocab_size=257, shard_tokens=100)
    manifest = write_shards(make_docs(3), lambda t: [70_000], out, eos_id=0, vocab_size=70_001, source="big")
    assert manifest["dtype"] == "uint32" and manifest["source"] == "big"
    assert sorted(p.name for p in out.glob("shard_*.npy")) == ["shard_00000.npy"]  # old shards removed
    with pytest.raises(ValueError, match="outside"):
        write_shards(make_docs(1), lambda t: [300], out, eos_id=EOS, vocab_size=257)
    with pytest.raises(ValueError, match="eos_id"):
        write_shards(make_docs(1), encode, out, eos_id=257, vocab_size=257)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        read_manifest(tmp_path)


def take(loader: PackedLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def test_batches_are_shifted_windows_of_the_stream(shard_dir):
    tokens = stream(shard_dir).tolist()
    text = bytes(t if t != EOS else 0 for t in tokens)
    x, y = next(PackedLoader(shard_dir, seq_len=32, batch_size=4, seed=0))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        window = bytes(t if t != EOS else 0 for t in row_x + row_y[-1:])
        assert window in text


def test_deterministic_epochs_cover_distinct_windows(shard_dir):
    a = take(PackedLoader(shard_dir, 32, 4, seed=3), 45)  # 2532 tokens: 19 steps an epoch
    b = take(PackedLoader(shard_dir, 32, 4, seed=3), 45)
    c = take(PackedLoader(shard_dir, 32, 4, seed=4), 45)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    loader = PackedLoader(shard_dir, 32, 4, seed=3)
    rows = []
    while loader.epoch == 0:
        rows += [tuple(r) for r in next(loader)[0].tolist()]
    assert len(rows) == len(set(rows))  # no window twice within an epoch


def test_resume_continues_with_exactly_the_same_batches(shard_dir):
    reference = take(PackedLoader(shard_dir, 32, 4, seed=1), 45)
    first = PackedLoader(shard_dir, 32, 4, seed=1)
    take(first, 25)  # into epoch 1 (19 steps an epoch)
    assert first.epoch == 1
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    resumed = PackedLoader(shard_dir, 32, 4, seed=1)
    resumed.load_state_dict(state)
    for (xr, yr), (xs, ys) in zip(reference[25:], take(resumed, 20)):
        assert torch.equal(xr, xs) and torch.equal(yr, ys)
    with pytest.raises(ValueError, match="batch_size"):
        PackedLoader(shard_dir, 32, 2, seed=1).load_state_dict(state)


def test_ranks_split_each_global_batch(shard_dir):
    single = take(PackedLoader(shard_dir, 16, 4, seed=5), 12)
    r0 = take(PackedLoader(shard_dir, 16, 2, seed=5, rank=0, world_size=2), 12)
    r1 = take(PackedLoader(shard_dir, 16, 2, seed=5, rank=1, world_size=2), 12)
    for (xs, _), (x0, _), (x1, _) in zip(single, r0, r1):
        assert torch.equal(torch.cat([x0, x1]), xs)


def test_boundary_masking(shard_dir):
    plain = take(PackedLoader(shard_dir, 32, 4, seed=2), 5)
    masked = take(PackedLoader(shard_dir, 32, 4, seed=2, mask_boundaries=True), 5)
    seen_boundary = False
    for (x, y), (xm, ym) in zip(plain, masked):
        boundary = x == EOS
        seen_boundary |= bool(boundary.any())
        assert torch.equal(x, xm)
        assert torch.all(ym[boundary] == IGNORE_INDEX) and torch.equal(ym[~boundary], y[~boundary])
        assert torch.all((y == EOS) == (ym == EOS))  # predicting the separator is still trained
    assert seen_boundary


def test_unshuffled_walks_from_the_start_and_small_data_errors(shard_dir):
    x, y = next(PackedLoader(shard_dir, 8, 2, shuffle=False))
    tokens = torch.from_numpy(stream(shard_dir)[:17].astype(np.int64))
    assert torch.equal(x[0], tokens[:8]) and torch.equal(x[1], tokens[8:16]) and torch.equal(y[1], tokens[9:17])
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        PackedLoader(shard_dir, 1000, 8)
