"""Resolving TrainConfig.data: shard dirs, corpora prepared into out_dir, SFT conversations."""
import json
from pathlib import Path

import pytest
import torch

from llmkit.data.loader import PackedLoader
from llmkit.train import Trainer
from llmkit.train.data import ConversationBatches, build_data
from llmkit.train.distributed import Dist

from .helpers import TINY, WORDS, tiny_cfg

CPU = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from llmkit.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tok")
    Tokenizer.train([" ".join(WORDS * 20), "hello there, how are you? fine thanks."] * 5, 300).save_pretrained(path)
    return path


def test_shard_root_gives_train_val_and_bytes_per_token(tmp_path, byte_shards):
    data = build_data(tiny_cfg(tmp_path, data=str(byte_shards), seq_len=32), 256, CPU)
    assert isinstance(data.train, PackedLoader)
    x, y = next(data.train)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    manifest = json.loads((byte_shards / "val" / "manifest.json").read_text())
    assert data.bytes_per_token == pytest.approx(manifest["num_bytes"] / manifest["num_tokens"])
    val = list(data.val())
    assert len(val) == (manifest["num_tokens"] - 1) // 32 // 4  # every window once, no wrap-around
    assert torch.equal(val[0][0], list(data.val())[0][0])  # a fresh iterable each time


def test_plain_shard_dir_and_val_data(tmp_path, byte_shards):
    cfg = tiny_cfg(tmp_path, data=str(byte_shards / "train"))
    assert build_data(cfg, 256, CPU).val is None
    cfg = tiny_cfg(tmp_path, data=str(byte_shards / "train"), val_data=str(byte_shards / "val"))
    assert build_data(cfg, 256, CPU).val is not None


def test_shards_beyond_the_vocabulary_are_refused(tmp_path, byte_shards):
    with pytest.raises(ValueError, match="set model_overrides.vocab_size"):
        build_data(tiny_cfg(tmp_path, data=str(byte_shards)), 128, CPU)


def test_text_corpus_is_tokenised_into_out_dir_once(tmp_path, tokenizer_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(WORDS[i % 7:] * 12))
    cfg = tiny_cfg(tmp_path, data=str(corpus), tokenizer=str(tokenizer_dir))
    data = build_data(cfg, 300, CPU)
    out = Path(cfg.out_dir) / "data"
    manifest = json.loads((out / "val" / "manifest.json").read_text())
    assert manifest["num_bytes"] > manifest["num_tokens"] > 0 and data.bytes_per_token > 1
    assert data.tokenizer.vocab_size == 300
    stamp = (out / "train" / "manifest.json").stat().st_mtime_ns
    build_data(cfg, 300, CPU)
    assert (out / "train" / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_corpus_without_tokenizer_trains_one_of_the_model_vocab(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i % 5:]) for i in range(400)))
    cfg = tiny_cfg(tmp_path, data=str(corpus))
    data = build_data(cfg, 300, CPU)
    assert 256 < data.tokenizer.vocab_size <= 300 and (Path(cfg.out_dir) / "tokenizer" / "tokenizer.json").exists()


def test_corpus_for_a_gguf_model_is_tokenised_with_the_gguf_tokenizer(tmp_path, tokenizer_dir):
    from llmkit import CausalLM, ModelConfig
    from llmkit.io import export_gguf
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    spec = json.loads(tok.backend.to_str())["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get)
    model = tmp_path / "model.gguf"
    export_gguf(CausalLM(ModelConfig(**{**TINY, "vocab_size": 300})), model, tokenizer_metadata={
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [" ".join(m) for m in spec["merges"]], "tokenizer.ggml.eos_token_id": tok.eos_id,
        "tokenizer.ggml.token_type": [3 if t in tok.special_tokens else 1 for t in tokens]})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i % 5:]) for i in range(400)))
    cfg = tiny_cfg(tmp_path, model=str(model), data=str(corpus))
    data = build_data(cfg, 300, CPU)
    text = "the king said to the queen: good night, my lord"
    assert data.tokenizer.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert not (Path(cfg.out_dir) / "tokenizer").exists()  # no fresh BPE trained beside the model


def test_conversation_batches_shard_ranks_and_resume():
    items = [(torch.arange(n), torch.arange(n)) for n in range(3, 13)]  # 10 items of lengths 3..12
    ranks = [ConversationBatches(items, 2, seed=1, rank=r, world_size=2, pad_id=-1) for r in range(2)]
    single = ConversationBatches(items, 4, seed=1)
    def lengths(batch):
        return sorted(int(n) for n in (batch[1] != -100).sum(1))

    for _ in range(5):  # crosses an epoch (2 steps per epoch)
        x0, x1, xs = next(ranks[0]), next(ranks[1]), next(single)
        assert sorted(lengths(x0) + lengths(x1)) == lengths(xs)  # rank slices make up the global batch
        assert (x0[0] == -1).sum() == sum(x0[0].shape[1] - n for n in lengths(x0))  # right-padded with pad_id
    resumed = ConversationBatches(items, 4, seed=1)
    resumed.load_state_dict(single.state_dict())
    assert torch.equal(next(resumed)[0], next(single)[0])
    with pytest.raises(ValueError, match="batch_size"):
        ConversationBatches(items, 2, seed=1).load_state_dict(single.state_dict())


def test_sft_trains_only_on_assistant_tokens(tmp_path, tokenizer_dir):
    lines = [{"messages": [{"role": "user", "content": f"hello {w}"}, {"role": "assistant", "content": f"the {w}"}]}
             for w in WORDS]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    cfg = tiny_cfg(tmp_path, task="sft", data=str(path), val_data=str(path), tokenizer=str(tokenizer_dir),
                   seq_len=48, model_overrides={"vocab_size": 300}, max_steps=2)
    trainer = Trainer(cfg)
    x, y = next(trainer.data.train)
    assert 0 < (y != -100).float().mean() < 0.5  # the user turn and template are not targets
    result = trainer.fit()
    assert result.step == 2 and result.eval["val_loss"] > 0
    assert (Path(cfg.out_dir) / "model" / "tokenizer.json").exists()
