"""Loading paths and their errors: small GGUF files written here, HF directories, batching."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from llmkit.tokenizer import Tokenizer


def _write_gguf(
    path: Path, tok: Tokenizer | None, model: str = "gpt2", pre: str = "llama-bpe", merges: bool = True
) -> Path:
    """A weightless GGUF holding ``tok``'s vocabulary as llama.cpp's converter would write it."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    if tok is not None:
        spec = json.loads(tok.backend.to_str())["model"]
        tokens = sorted(spec["vocab"], key=spec["vocab"].get)
        writer.add_tokenizer_model(model)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        if merges:
            writer.add_token_merges([" ".join(m) for m in spec["merges"]])
        writer.add_token_types([3 if t in tok.special_tokens else 1 for t in tokens])
        writer.add_bos_token_id(tok.token_to_id("<|im_start|>"))
        writer.add_eos_token_id(tok.eos_id)
        writer.add_add_bos_token(True)
        writer.add_chat_template(tok.chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_written_from_trained_tokenizer(trained: Tokenizer, tmp_path: Path, sample: str) -> None:
    loaded = Tokenizer.from_pretrained(_write_gguf(tmp_path / "t.gguf", trained))
    assert loaded.encode(sample, add_special_tokens=False) == trained.encode(sample)
    assert loaded.encode(sample) == [loaded.bos_id, *trained.encode(sample)]  # add_bos_token
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|im_start|>", "<|endoftext|>", None)
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.chat_template == trained.chat_template


def test_bos_lives_in_tokenizer_json(trained: Tokenizer, tmp_path: Path) -> None:
    # A GGUF with add_bos_token, saved in HF form: both libraries prepend BOS.
    with_bos = Tokenizer.from_pretrained(_write_gguf(tmp_path / "t.gguf", trained))
    with_bos.save_pretrained(tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.encode("hi") == Tokenizer.from_pretrained(tmp_path / "hf").encode("hi") == with_bos.encode("hi")
    assert with_bos.encode("hi")[0] == with_bos.bos_id


def test_add_bos_token_in_config_is_ignored_like_transformers(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(bos_token={"__type": "AddedToken", "content": "<|im_start|>", "special": True}, add_bos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.bos_token == "<|im_start|>" and tok.encode("hi") == trained.encode("hi")
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path)).encode("hi") == tok.encode("hi")


def test_hf_directory_chat_template_file_and_legacy_map(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.eos_token == "<|endoftext|>"  # from special_tokens_map.json
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "x"


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_encode_batch(trained: Tokenizer, padding_side: str) -> None:
    texts = ["a longer line of text", "hi", ""]
    ids, mask = trained.encode_batch(texts, padding_side=padding_side)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    assert ids.shape == (3, len(trained.encode(texts[0])))
    for row, m, text in zip(ids.tolist(), mask.tolist(), texts):
        real = [i for i, keep in zip(row, m) if keep]
        assert real == trained.encode(text)
        assert all(i == trained.pad_id for i, keep in zip(row, m) if not keep)
        if padding_side == "left":
            assert m == sorted(m)  # padding first, so the last column is every row's last real token
        else:
            assert m == sorted(m, reverse=True)


def test_encode_batch_rejects_bad_side(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="padding_side"):
        trained.encode_batch(["x"], padding_side="middle")


# ---- errors -----------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GGUF file not found: .*nope.gguf"):
        Tokenizer.from_pretrained(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="tokenizer file not found: .*tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_corrupt_gguf(trained: Tokenizer, tmp_path: Path) -> None:
    whole = _write_gguf(tmp_path / "whole.gguf", trained).read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(whole[: len(whole) // 2])  # cut inside the token list
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello, I am not a GGUF file")
    for path in (truncated, not_gguf):
        with pytest.raises(ValueError, match=f"{path.name} is not a valid GGUF file"):
            Tokenizer.from_pretrained(path)


def test_unsupported_gguf_tokenizer(trained: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.model 'llama'"):
        Tokenizer.from_pretrained(_write_gguf(tmp_path / "spm.gguf", trained, model="llama"))
    with pytest.raises(ValueError, match="unsupported pre-tokenizer 'mystery'.*gpt2"):
        Tokenizer.from_pretrained(_write_gguf(tmp_path / "pre.gguf", trained, pre="mystery"))
    with pytest.raises(ValueError, match="gpt2 tokenizer without tokenizer.ggml.merges"):
        Tokenizer.from_pretrained(_write_gguf(tmp_path / "nomerges.gguf", trained, merges=False))
    with pytest.raises(ValueError, match="holds no tokenizer"):
        Tokenizer.from_pretrained(_write_gguf(tmp_path / "empty.gguf", None))


def test_corrupt_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"model": 42}')
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
