"""GGUF: export -> import round trips, the file layout llama.cpp expects, parity with transformers, errors."""
import gguf
import numpy as np
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.io import CheckpointError, export_gguf, load_model
from llmkit.io.gguf import load_gguf, permute_qk, read_gguf_config
from llmkit.presets import PRESETS

Q = gguf.GGMLQuantizationType
BASE = dict(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128,
            init_std=0.25, bos_token_id=1, eos_token_id=2)
CASES = {
    "llama": {},
    "llama-mha-tied": dict(n_kv_heads=None, tie_word_embeddings=True),
    "llama-bias-headdim": dict(qkv_bias=True, o_bias=True, mlp_bias=True, head_dim=32),
    "qwen2": dict(qkv_bias=True),
    "qwen3": dict(qk_norm=True, head_dim=128),  # transformers' GGUF reader assumes Qwen3's default head_dim
}


def _model(case: str = "llama", **changes) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**{**BASE, **CASES[case], **changes})).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped 1-D tensor shows up
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
    return model


def _ids() -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))


def _exported(tmp_path, case="llama", dtype="f32", **changes):
    model = _model(case, **changes)
    path = tmp_path / f"{case}-{dtype}.gguf"
    export_gguf(model, path, dtype=dtype)
    return model, path


# ----- round trips -----
@pytest.mark.parametrize("case", sorted(CASES))
def test_f32_round_trip_is_exact(case, tmp_path):
    model, path = _exported(tmp_path, case)
    loaded = load_model(path)
    assert loaded.cfg == model.cfg.replace(init_std=ModelConfig.init_std)  # init_std is not a GGUF key
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_lossy_round_trip_within_quantisation_error(dtype, tmp_path):
    model, path = _exported(tmp_path, "llama", dtype)
    loaded = load_gguf(path)
    for name, w in model.state_dict().items():
        got = loaded.state_dict()[name]
        if w.dim() == 1:
            assert torch.equal(got, w), name  # 1-D tensors are stored f32
        elif dtype == "f16":
            assert torch.equal(got, w.half().float()), name
        else:  # q8_0: one fp16 scale per 32 values, rounding error at most half a step of amax / 127
            step = w.abs().unflatten(-1, (-1, 32)).amax(-1, keepdim=True) / 127
            assert ((got - w).abs().unflatten(-1, (-1, 32)) <= 0.57 * step + 1e-7).all(), name
    with torch.no_grad():
        ref = model(_ids())
        err = (loaded(_ids()) - ref).abs().max() / ref.abs().max()
    assert 0 < err < (0.01 if dtype == "f16" else 0.1)  # this random-init model amplifies weight error


@pytest.mark.parametrize("scaling", [
    dict(rope_scaling="linear", rope_factor=4.0),
    dict(rope_scaling="yarn", rope_factor=4.0, rope_original_max_seq_len=32),
    dict(rope_scaling="yarn", rope_factor=4.0, rope_original_max_seq_len=32, rope_attention_factor=1.25,
         rope_beta_fast=16.0, rope_beta_slow=2.0),
    dict(rope_scaling="llama3", rope_factor=8.0, rope_theta=500000.0, rope_original_max_seq_len=8192, head_dim=64,
         max_seq_len=131072),
], ids=["linear", "yarn", "yarn-attn", "llama3"])
def test_rope_scaling_round_trip(scaling, tmp_path):
    model, path = _exported(tmp_path, "llama", **scaling)
    assert read_gguf_config(path) == model.cfg.replace(init_std=ModelConfig.init_std)
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("rope_freqs.weight" in names) == (scaling["rope_scaling"] == "llama3")


# ----- the file llama.cpp reads -----
def test_permute_qk_interleaves_the_rotary_halves():
    w = np.arange(8.0).reshape(8, 1)  # 2 heads of head_dim 4: rows (x0 x1 y0 y1) per head
    assert permute_qk(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert np.array_equal(permute_qk(permute_qk(w, 2), 2, inverse=True), w)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_file_layout(dtype, tmp_path):
    model, path = _exported(tmp_path, "llama", dtype)
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.attention.head_count_kv"]) == (2, 64, 2)
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert len(kinds) == 3 + 9 * 2
    assert kinds["output_norm.weight"] == kinds["blk.1.attn_norm.weight"] == Q.F32
    assert kinds["blk.0.ffn_down.weight"] == kinds["token_embd.weight"] == {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[dtype]
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embd.shape.tolist() == [64, 128]  # ggml ne order: fastest dim first
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    if dtype == "f32":  # llama.cpp's interleaved q rows
        hf_q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
        assert np.array_equal(q.data, permute_qk(hf_q, 4)) and not np.array_equal(q.data, hf_q)


def test_q8_0_falls_back_to_f16_for_rows_off_the_block(tmp_path):
    _, path = _exported(tmp_path, "llama", "q8_0", ffn_dim=80)  # down_proj rows are 80 long
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert kinds["blk.0.ffn_down.weight"] == Q.F16 and kinds["blk.0.ffn_up.weight"] == Q.Q8_0


def test_tokenizer_metadata_is_copied(tmp_path):
    tokens = [f"t{i}" for i in range(128)]
    path = tmp_path / "tok.gguf"
    export_gguf(_model(), path, tokenizer_metadata={
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1] * 128,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.eos_token_id": 7})
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.tokens"].contents() == tokens
    assert fields["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert fields["tokenizer.ggml.eos_token_id"].types == [gguf.GGUFValueType.UINT32]
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 7 and fields["tokenizer.ggml.add_bos_token"].contents() is False
    with pytest.raises(ValueError, match="general.name"):
        export_gguf(_model(), path, tokenizer_metadata={"general.name": "x"})


# ----- parity with transformers' GGUF loader (checks the q/k permutation against an independent reader) -----
@pytest.mark.parametrize("case,dtype", [("llama", "f32"), ("llama", "f16"), ("llama-mha-tied", "f32"),
                                        ("qwen2", "f32"), ("qwen3", "f32")])
def test_transformers_loads_our_gguf(case, dtype, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, path = _exported(tmp_path, case, dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ours = load_gguf(path)
    with torch.no_grad():
        expected = hf(_ids()).logits
        assert (ours(_ids()) - expected).abs().max().item() <= 1e-4
        if dtype == "f32":
            assert (model(_ids()) - expected).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_gguf):
    """The real Q4_1 SmolLM2-135M-Instruct: our dequantise + forward vs transformers' on the same file."""
    transformers = pytest.importorskip("transformers")
    ours = load_gguf(smollm2_gguf)
    assert ours.cfg == PRESETS["smollm2-135m"].replace(pad_token_id=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
    # "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        got, expected = ours(ids), hf(ids).logits
    assert (got - expected).abs().max().item() <= 1e-3
    assert got[0, -1].argmax() == expected[0, -1].argmax()


# ----- errors -----
def test_garbage_and_truncated_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.gguf.*not a GGUF file"):
        load_gguf(garbage)
    _, path = _exported(tmp_path)
    data = path.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 4096):
        truncated = tmp_path / "truncated.gguf"
        truncated.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated.gguf.*truncated or corrupt"):
            load_gguf(truncated)


def _patch(path, edit) -> None:
    """Edit a GGUF file's header in place through the reader's writable memory map."""
    reader = gguf.GGUFReader(path, "r+")
    edit(reader)
    reader.data.flush()
    del reader


def test_unsupported_architecture(tmp_path):
    _, path = _exported(tmp_path)

    def rename(reader):
        reader.fields["general.architecture"].parts[-1][:] = np.frombuffer(b"bloom", np.uint8)  # as long as "llama"

    _patch(path, rename)
    with pytest.raises(CheckpointError, match="architecture 'bloom' is not supported"):
        load_gguf(path)


def test_unsupported_tensor_type(tmp_path):
    _, path = _exported(tmp_path)

    def retype(reader):  # Q8_1 has no dequantiser in gguf; its data reads shorter, so the file stays in bounds
        next(t for t in reader.tensors if t.name == "token_embd.weight").field.parts[4][0] = Q.Q8_1

    _patch(path, retype)
    with pytest.raises(CheckpointError, match="token_embd.weight has type Q8_1"):
        load_gguf(path)


def test_rope_freqs_that_are_not_llama3(tmp_path):
    _, path = _exported(tmp_path, "llama", rope_scaling="llama3", rope_factor=8.0, rope_theta=500000.0,
                        rope_original_max_seq_len=8192, head_dim=64)

    def scramble(reader):
        freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
        freqs[:] = np.linspace(1.0, 3.0, freqs.size)[::-1]

    _patch(path, scramble)
    with pytest.raises(CheckpointError, match="rope_freqs.weight is not a llama3 rope scaling"):
        load_gguf(path)


def test_missing_tensor(tmp_path, monkeypatch):
    model = _model()
    full = CausalLM.state_dict(model)
    monkeypatch.setattr(model, "state_dict", lambda: {k: v for k, v in full.items() if k != "model.layers.1.mlp.up_proj.weight"})
    export_gguf(model, tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match="missing 1 tensor.*layers.1.mlp.up_proj.weight"):
        load_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("changes,match", [
    (dict(norm="layernorm"), "llama-style"),
    (dict(sliding_window=8), "'mistral'"),
    (dict(activation="gelu"), "activation 'gelu'"),
    (dict(rope_scaling="dynamic", rope_factor=2.0), "rope_scaling='dynamic'"),
])
def test_export_rejects_what_gguf_cannot_express(changes, match, tmp_path):
    with pytest.raises(CheckpointError, match=match):
        export_gguf(_model(**changes), tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # atomic: nothing left behind
    with pytest.raises(ValueError, match="q4_k"):
        export_gguf(_model(), tmp_path / "x.gguf", dtype="q4_k")
