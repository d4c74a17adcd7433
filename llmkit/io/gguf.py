"""GGUF (llama.cpp's single-file format) import and export for llama-style models.

Import reads the header with ``gguf.GGUFReader`` (a memory map), builds the
config from the metadata (:mod:`llmkit.io.gguf_config`), dequantises every
tensor (unless asked to keep the blocks, below) to float32 with ``gguf.quants``
(F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, the K-quants, ...), renames llama.cpp's tensors to ours (HF's), and hands the
state dict to :func:`~llmkit.io.build.build_from_state_dict` for the name and
shape checks. GGUF lists dims fastest first (ggml's ``ne``), the reverse of
torch; the reader already exposes data in row-major (torch) order.

Q/K permutation. llama.cpp's ``llama`` architecture rotates adjacent pairs
(2i, 2i+1); HF's LLaMA rotates (i, i + d/2). Its convert script therefore
reorders the rows of each q/k head from [x_0..x_{d/2-1}, y_0..y_{d/2-1}] to
[x_0, y_0, x_1, y_1, ...], which gives the same attention scores. We undo
that on import and redo it on export. ``qwen2``/``qwen3`` use the half (NEOX)
rotation in llama.cpp and are stored unpermuted.

Export writes llama.cpp's keys and names as f32, f16, q8_0, q4_0 or q4_1
(quantised with the ``gguf`` package's bit-exact port of ggml's rounding); as
llama.cpp does, 1-D tensors (norms, biases) stay f32, and rows whose length is
not a multiple of the 32-wide block fall back to f16. GGUF block layers are
written as the blocks they hold, so a file loaded with ``keep_quantized``
round-trips byte for byte.

Native blocks. ``load_gguf(path, keep_quantized=True)`` keeps every linear
and embedding weight of type Q8_0, Q4_0, Q4_1, Q4_K or Q6_K as the file's
blocks (:mod:`llmkit.quant.gguf_linear`): copy-on-write views of the memory
map, so the model's resident size is about the file's and pages are read on
first use. Other types are dequantised as usual. The blocks keep llama.cpp's
layout; only the q/k rows are permuted (whole rows, so the blocks are intact).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.io.atomic import atomic_path
from llmkit.io.build import build_from_state_dict
from llmkit.io.errors import CheckpointError
from llmkit.io.gguf_config import ROPE_FREQS, config_from_gguf, gguf_arch, gguf_metadata, llama3_rope_freqs
from llmkit.model import CausalLM

if TYPE_CHECKING:
    from gguf import GGUFReader, GGUFWriter, ReaderTensor

# llama.cpp name -> ours: whole-model tensors, then per-block ones (blk.N.<key> <-> model.layers.N.<value>)
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_BACK = {ours: theirs for theirs, ours in _GLOBAL.items()}
_BLOCK_BACK = {ours: theirs for theirs, ours in _BLOCK.items()}
_PERMUTED_ARCHS = ("llama",)
_EXPORT_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
_METADATA_ARRAY_MAX = 1024  # longer arrays (the vocabulary, merges) are not config and are not read


def gguf_to_hf(name: str) -> str:
    """Our name for a llama.cpp tensor name; unknown names come back unchanged (reported as unexpected)."""
    stem, _, kind = name.rpartition(".")
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{kind}"
    return name


def hf_to_gguf(name: str) -> str:
    """llama.cpp's name for one of our tensor names."""
    stem, _, kind = name.rpartition(".")
    if stem in _GLOBAL_BACK:
        return f"{_GLOBAL_BACK[stem]}.{kind}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _BLOCK_BACK:
        return f"blk.{m.group(1)}.{_BLOCK_BACK[m.group(2)]}.{kind}"
    raise CheckpointError(f"tensor {name} has no GGUF name")


def permute_qk(w: np.ndarray, n_heads: int, inverse: bool = False) -> np.ndarray:
    """Reorder each head's rows between HF's half layout and llama.cpp's interleaved one.

    Args:
        w: q or k weight (n_heads * head_dim, dim) or bias (n_heads * head_dim,).
        n_heads: heads in ``w`` (the kv heads for k).
        inverse: interleaved -> half (import) instead of half -> interleaved (export).
    """
    half = w.shape[0] // n_heads // 2
    split = (n_heads, half, 2) if inverse else (n_heads, 2, half)
    return w.reshape(*split, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path: Path, mode: str = "r") -> "GGUFReader":
    from gguf import GGUFReader  # deferred: importing gguf costs ~0.2 s

    if not path.is_file():
        raise CheckpointError(f"no such GGUF file: {path}")
    try:
        return GGUFReader(path, mode)
    except Exception as e:  # the reader signals truncation and corruption with assorted exception types
        raise CheckpointError(f"cannot read {path}: not a GGUF file, or truncated or corrupt "
                              f"({type(e).__name__}: {e})") from e


def _dequantize(tensor: "ReaderTensor", path: Path) -> np.ndarray:
    """float32 data of one reader tensor, in torch shape order."""
    from gguf import dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        w = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
                              "which llmkit cannot dequantise") from None
    w = np.asarray(w, dtype=np.float32).reshape(shape)
    return w if w.flags.writeable else w.copy()  # F32 data is a read-only view of the memory map


def _read_config(reader: "GGUFReader", path: Path) -> ModelConfig:
    meta = {k: f.contents() for k, f in reader.fields.items() if len(f.data) <= _METADATA_ARRAY_MAX}
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    freqs = next((_dequantize(t, path) for t in reader.tensors if t.name == ROPE_FREQS), None)
    return config_from_gguf(meta, shapes, freqs, str(path))


def read_gguf_config(path: str | Path) -> ModelConfig:
    """The ModelConfig a GGUF file describes, read from its header (no weights are dequantised)."""
    path = Path(path)
    return _read_config(_open(path), path)


def read_gguf(path: str | Path, dtype: torch.dtype | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and every tensor of a GGUF file, under our names and in HF's q/k row order.

    Args:
        path: the ``.gguf`` file.
        dtype: what each tensor is converted to right after dequantisation; None = float32.

    Raises:
        CheckpointError: unreadable file, unsupported architecture or tensor type; the message names the file.
    """
    cfg, state, _ = _read(Path(path), dtype, keep_quantized=False)
    return cfg, state


def _read(path: Path, dtype: torch.dtype | None, keep_quantized: bool) -> tuple[ModelConfig, dict, dict]:
    """:func:`read_gguf`; with ``keep_quantized`` the 2-D tensors of a native block type are not dequantised.

    Returns:
        (config, state, blocks): ``blocks`` maps each such tensor's name to (layout name, its
        (rows, row_bytes) uint8 blocks), and ``state`` holds a meta-device placeholder of its
        float shape in its place, so the builder still checks its name and shape.
    """
    # copy-on-write: kept blocks are writable views of the file's pages, read from disk when first used
    reader = _open(path, "c" if keep_quantized else "r")
    cfg = _read_config(reader, path)
    arch = reader.fields["general.architecture"].contents()
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.kv_heads}
    native = _native_types(reader) if keep_quantized else {}
    state: dict[str, torch.Tensor] = {}
    blocks: dict[str, tuple[str, torch.Tensor]] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:  # folded into the config
            continue
        name = gguf_to_hf(tensor.name)
        # q/k block rows are permuted as float rows are (a copy); the other blocks stay in the map
        w = tensor.data if name in native else _dequantize(tensor, path)
        proj = name.rsplit(".", 2)[-2]
        if arch in _PERMUTED_ARCHS and proj in heads:
            w = permute_qk(w, heads[proj], inverse=True)
        if name in native:
            shape = tuple(int(d) for d in reversed(tensor.shape))
            blocks[name] = (native[name], torch.from_numpy(w))
            state[name] = torch.empty(shape, device="meta")
        else:
            state[name] = torch.from_numpy(w).to(dtype or torch.float32)
    return cfg, state, blocks


def _native_types(reader: "GGUFReader") -> dict[str, str]:
    """Our name -> layout name of the 2-D tensors whose type llmkit has block kernels for."""
    from llmkit.quant.gguf_types import GGUF_TYPES

    by_id = {t.ggml_type: t.name for t in GGUF_TYPES.values()}
    return {gguf_to_hf(t.name): by_id[int(t.tensor_type)] for t in reader.tensors
            if int(t.tensor_type) in by_id and len(t.shape) == 2}


def load_gguf(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              keep_quantized: bool = False) -> CausalLM:
    """Load a GGUF file (llama, qwen2, qwen3; any quantisation gguf can dequantise) as a CausalLM.

    Args:
        path: the ``.gguf`` file.
        dtype: parameter dtype (with ``keep_quantized``: that of the float tensors and the
            activations); None = float32.
        device: where the parameters live; None = CPU.
        keep_quantized: keep Q8_0/Q4_0/Q4_1/Q4_K/Q6_K linear and embedding weights as the file's
            blocks (:class:`~llmkit.quant.gguf_linear.GGUFLinear`, ``GGUFEmbedding``), so the
            model takes about the file's size in memory and runs llmkit's block kernels; tensors
            of other types are dequantised as without it. False (the default) dequantises everything.

    Raises:
        CheckpointError: unreadable file, unsupported architecture or tensor type, missing or
            unexpected tensor, or a shape that does not match the metadata; the message names the file.
    """
    cfg, state, blocks = _read(Path(path), dtype, keep_quantized)
    if not blocks:
        return build_from_state_dict(cfg, state, dtype, device, source=str(path))
    # built on the CPU (meta placeholders cannot be copied to a device), moved once the blocks are in
    model = build_from_state_dict(cfg, state, dtype, None, source=str(path))
    _swap_in_blocks(model, blocks, dtype or torch.float32)
    return (model.to(device) if device is not None else model).eval()


def _swap_in_blocks(model: CausalLM, blocks: dict[str, tuple[str, torch.Tensor]], dtype: torch.dtype) -> None:
    """Replace the layers whose weights are meta placeholders by GGUF block layers holding ``blocks``.

    A tied LM head becomes a block layer sharing the embedding's table, as in llama.cpp.
    """
    from llmkit.quant import gguf_ops
    from llmkit.quant.gguf_linear import GGUFEmbedding, GGUFLinear

    gguf_ops.load()  # build the kernels now, not inside the first (maybe compiled) forward
    for name, (qtype, data) in blocks.items():
        path = name.removesuffix(".weight")
        old = model.get_submodule(path)
        if isinstance(old, nn.Embedding):
            new = GGUFEmbedding(old.num_embeddings, old.embedding_dim, qtype, dtype, device="meta")
        elif isinstance(old, nn.Linear):
            new = GGUFLinear(old.in_features, old.out_features, qtype, old.bias is not None, dtype, device="meta")
        else:
            raise CheckpointError(f"GGUF tensor {name} has block type {qtype} but is not a linear or embedding weight")
        new.to_empty(device=data.device)  # real storage (never touched: it is all replaced) for its buffers
        new.weight = data
        if isinstance(new, GGUFLinear) and old.bias is not None:
            new.bias = old.bias.requires_grad_(False)
        model.set_submodule(path, new)
    embed = model.model.embed_tokens
    if model.cfg.tie_word_embeddings and isinstance(embed, GGUFEmbedding):
        head = GGUFLinear(embed.embedding_dim, embed.num_embeddings, embed.qtype, dtype=dtype, device="meta")
        head.to_empty(device=embed.weight.device)
        head.weight = embed.weight
        model.lm_head = head


def export_gguf(model: CausalLM, path: str | Path, dtype: str = "f32",
                tokenizer_metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a GGUF file llama.cpp and transformers can load (written atomically).

    Args:
        model: a CausalLM with a llama-style config (see :func:`~llmkit.io.gguf_config.gguf_arch`).
            GGUF block layers (a model loaded with ``keep_quantized=True``) are written as the blocks
            they hold, whatever ``dtype`` says; other quantised layers (anything with ``dequantize()``,
            e.g. ``llmkit.quant``'s int8/int4) are dequantised and written as ``dtype``.
        path: the ``.gguf`` file to write.
        dtype: "f32", "f16", "q8_0", "q4_0" or "q4_1" for the 2-D weights; 1-D tensors are always f32.
        tokenizer_metadata: ``tokenizer.*`` keys to copy (the vocabulary, merges, special ids, chat
            template), e.g. ``llmkit.tokenizer.gguf_format.read_gguf_metadata(src)`` when re-exporting
            a loaded GGUF. Ints are written as uint32 (int32 inside arrays), floats as float32.

    Raises:
        CheckpointError: the config has no GGUF equivalent.
        ValueError: an unknown ``dtype`` or a non-``tokenizer.`` metadata key.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf import GGML_QUANT_VERSION, GGUFWriter, quantize
    from gguf import LlamaFileType as F

    if dtype not in _EXPORT_TYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_EXPORT_TYPES)}")
    extra = dict(tokenizer_metadata or {})
    if bad := sorted(k for k in extra if not k.startswith("tokenizer.")):
        raise ValueError(f"tokenizer_metadata may hold only tokenizer.* keys, got {', '.join(bad)}")
    cfg: ModelConfig = model.cfg
    arch = gguf_arch(cfg)
    qtype = Q[dtype.upper()]
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.kv_heads}
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        for key, value in {**gguf_metadata(cfg, arch), **extra}.items():
            _add_key(writer, key, value)
        kinds = []
        for name, (w, kind) in _export_tensors(model).items():
            if name == "lm_head.weight" and model.lm_head_tied:
                continue  # llama.cpp: no output.weight means tied
            proj = name.rsplit(".", 2)[-2]
            if arch in _PERMUTED_ARCHS and proj in heads:
                w = permute_qk(w, heads[proj])  # whole rows, so block rows permute like float ones
            if kind is None:  # float: 1-D stays f32; rows off the 32-wide block grid fall back to f16
                kind = Q.F32 if w.ndim == 1 else qtype
                if kind not in (Q.F32, Q.F16) and w.shape[-1] % 32:
                    kind = Q.F16
                w = quantize(w, kind)
            if w.ndim == 2:
                kinds.append(kind)
            writer.add_tensor(hf_to_gguf(name), w, raw_dtype=kind)
        if (freqs := llama3_rope_freqs(cfg)) is not None:
            writer.add_tensor(ROPE_FREQS, freqs, raw_dtype=Q.F32)
        # what most matrices are, as llama.cpp's quantize tool labels a file (informational)
        file_types = {Q.F32: F.ALL_F32, Q.F16: F.MOSTLY_F16, Q.Q8_0: F.MOSTLY_Q8_0, Q.Q4_0: F.MOSTLY_Q4_0,
                      Q.Q4_1: F.MOSTLY_Q4_1, Q.Q4_K: F.MOSTLY_Q4_K_M, Q.Q6_K: F.MOSTLY_Q6_K}
        _add_key(writer, "general.file_type", int(file_types[max(set(kinds), key=kinds.count)]))
        _add_key(writer, "general.quantization_version", GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _export_tensors(model: CausalLM) -> dict[str, tuple[np.ndarray, Any]]:
    """Our name -> (array, GGUF type of its raw blocks, or None for float data to be converted), in state-dict order.

    GGUF block layers give their blocks; other layers with ``dequantize()`` give the float weight
    (and their bias) in place of their own tensors (codes, scales), which it is made from.
    """
    from gguf import GGMLQuantizationType as Q

    from llmkit.quant.gguf_linear import GGUFEmbedding, GGUFLinear

    def weight(m: nn.Module) -> tuple[np.ndarray, Any]:
        if isinstance(m, (GGUFLinear, GGUFEmbedding)):
            return m.weight.detach().cpu().numpy(), Q[m.qtype.upper()]
        return m.dequantize().detach().float().cpu().numpy(), None

    owned = {path: m for path, m in model.named_modules() if path and callable(getattr(m, "dequantize", None))}
    out: dict[str, tuple[np.ndarray, Any]] = {}
    for name, t in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in owned and leaf != "bias":
            out.setdefault(f"{owner}.weight", weight(owned[owner]))
        else:
            out[name] = (t.detach().float().cpu().numpy(), None)
    return out


def _add_key(writer: "GGUFWriter", key: str, value: Any) -> None:
    """One metadata key, typed as llama.cpp types it."""
    from gguf import GGUFValueType as V

    def vtype(v: Any) -> V:
        for py, t in ((bool, V.BOOL), (int, V.UINT32), (float, V.FLOAT32), (str, V.STRING)):
            if isinstance(v, py):
                return t
        raise ValueError(f"metadata {key}: cannot store a {type(v).__name__} in GGUF")

    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"metadata {key}: GGUF cannot store an empty array")
        sub = vtype(value[0])
        writer.add_key_value(key, list(value), V.ARRAY, sub_type=V.INT32 if sub == V.UINT32 else sub)
    else:
        writer.add_key_value(key, value, vtype(value))
