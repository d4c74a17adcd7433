"""GGUF with native blocks: load keeping Q8_0/Q4_0/Q4_1 weights, equal logits, compiled decoding, export back."""
import warnings

import gguf
import numpy as np
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import generate_tokens
from llmkit.io import export_gguf, load_model
from llmkit.io.gguf import load_gguf
from llmkit.quant import Int8Linear
from llmkit.quant.gguf_linear import GGUFEmbedding, GGUFLinear

# dims on the 32-wide block grid; q/k rows permuted (llama) and a tied head exercise the row handling
CFG = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64,
                  init_std=0.25, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def _file(tmp_path, dtype="q4_1", **changes):
    torch.manual_seed(0)
    path = tmp_path / f"tiny-{dtype}.gguf"
    export_gguf(CausalLM(CFG.replace(**changes)).eval(), path, dtype=dtype)
    return path


def _ids(t=20):
    return torch.randint(0, CFG.vocab_size, (2, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_1"])
def test_kept_blocks_give_the_dequantised_models_logits(dtype, tmp_path):
    path = _file(tmp_path, dtype)
    dense, native = load_model(path), load_model(path, keep_quantized=True)
    assert isinstance(native.model.embed_tokens, GGUFEmbedding)
    assert native.lm_head.weight is native.model.embed_tokens.weight  # tied: one table
    linears = [m for m in native.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == 2 * 7 + 1 and all(m.qtype == dtype and m.weight.dtype == torch.uint8 for m in linears)
    with torch.no_grad():  # 20 rows per matmul: the fp32 path, equal up to summation order
        torch.testing.assert_close(native(_ids()), dense(_ids()), rtol=1e-4, atol=1e-4)
    for name, m in native.named_modules():
        if isinstance(m, (GGUFLinear, GGUFEmbedding)):
            torch.testing.assert_close(m.dequantize(), dense.get_submodule(name).weight, rtol=0, atol=0)


def test_untied_head_and_biases(tmp_path):
    path = _file(tmp_path, "q8_0", tie_word_embeddings=False, qkv_bias=True)
    dense, native = load_gguf(path), load_gguf(path, keep_quantized=True)
    assert isinstance(native.lm_head, GGUFLinear) and native.lm_head.weight is not native.model.embed_tokens.weight
    assert native.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(native(_ids()), dense(_ids()), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_decoding_equals_eager(tmp_path):
    model = load_model(_file(tmp_path, n_layers=1), keep_quantized=True)  # one layer: compiling is the slow part
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compile falls back with a warning
        compiled = generate_tokens(model, _ids(5)[:1], max_new_tokens=8, compile=True)
    eager = generate_tokens(model, _ids(5)[:1], max_new_tokens=8)
    assert compiled.token_ids == eager.token_ids


def test_export_of_kept_blocks_is_byte_for_byte(tmp_path):
    src = _file(tmp_path, "q4_1", tie_word_embeddings=False)
    out = tmp_path / "again.gguf"
    export_gguf(load_gguf(src, keep_quantized=True), out, dtype="f32")  # blocks pass through whatever dtype says
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    theirs = {t.name: t for t in b.tensors}
    for x in a.tensors:
        y = theirs[x.name]
        assert x.tensor_type == y.tensor_type and np.array_equal(x.data, y.data), x.name
    assert b.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_1


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_export_of_an_int8_model_reads_back_as_ours(dtype, tmp_path):
    """A model quantised by another scheme is dequantised and written as Q8_0/Q4_0 blocks that the gguf reader
    decodes to exactly what our layers hold after loading them."""
    from llmkit.quant import quantize

    torch.manual_seed(0)
    model = quantize(CausalLM(CFG.replace(tie_word_embeddings=False)).eval(), "int8")
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    path = tmp_path / "int8.gguf"
    export_gguf(model, path, dtype=dtype)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["output.weight"] == dtype.upper() and types["output_norm.weight"] == "F32"
    native = load_gguf(path, keep_quantized=True)
    up = native.get_submodule("model.layers.1.mlp.up_proj")
    ref = gguf.dequantize(next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight").data,
                          getattr(gguf.GGMLQuantizationType, dtype.upper()))
    np.testing.assert_array_equal(up.dequantize().numpy(), ref.reshape(up.out_features, up.in_features))


def test_export_of_a_quantized_head_in_a_tied_model_writes_an_output_matrix(tmp_path):
    """A tied model whose head was quantised (the embedding kept float) exports the head as output.weight,
    so the file reads back untied with the head's values."""
    from llmkit.quant import quantize

    torch.manual_seed(0)
    model = quantize(CausalLM(CFG).eval(), "int8", skip=("embed_tokens",))
    path = tmp_path / "head.gguf"
    export_gguf(model, path, dtype="f32")
    loaded = load_gguf(path)
    assert not loaded.cfg.tie_word_embeddings
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.dequantize(), rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=0)


@pytest.mark.slow
def test_smollm2_stays_quantised(smollm2_gguf):
    """The real Q4_1 file: about its size in memory, logits as the dequantised load's, greedy decoding agrees."""
    native = load_gguf(smollm2_gguf, keep_quantized=True)
    held = {t.data_ptr(): t.numel() * t.element_size() for t in [*native.parameters(), *native.buffers()]}
    assert sum(held.values()) < 1.05 * smollm2_gguf.stat().st_size
    dense = load_gguf(smollm2_gguf)
    ids = torch.tensor([[1, 504, 3458, 314, 4081, 30, 198, 2020, 5248, 3946, 288, 7198]])
    with torch.no_grad():
        a, b = native(ids), dense(ids)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())
    assert generate_tokens(native, ids, max_new_tokens=6).token_ids == generate_tokens(dense, ids, max_new_tokens=6).token_ids


def test_cast_and_move_like_a_float_model(tmp_path):
    """model.to(dtype) casts the activations and float tensors, never the blocks; .to(device) moves everything."""
    native = load_model(_file(tmp_path, "q8_0", tie_word_embeddings=False, qkv_bias=True), keep_quantized=True)
    native.to("cpu").to(torch.bfloat16)
    assert native.dtype == torch.bfloat16 and native.model.embed_tokens.weight.dtype == torch.uint8
    with torch.no_grad():
        assert native(_ids()).dtype == torch.bfloat16
