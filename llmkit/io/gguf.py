"""GGUF (llama.cpp's single-file format) import and export for llama-style models.

Import reads the header with ``gguf.GGUFReader`` (a memory map), builds the
config from the metadata (:mod:`llmkit.io.gguf_config`), dequantises every
tensor to float32 with ``gguf.quants`` (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0,
the K-quants, ...), renames llama.cpp's tensors to ours (HF's), and hands the
state dict to :func:`~llmkit.io.build.build_from_state_dict` for the name and
shape checks. GGUF lists dims fastest first (ggml's ``ne``), the reverse of
torch; the reader already exposes data in row-major (torch) order.

Q/K permutation. llama.cpp's ``llama`` architecture rotates adjacent pairs
(2i, 2i+1); HF's LLaMA rotates (i, i + d/2). Its convert script therefore
reorders the rows of each q/k head from [x_0..x_{d/2-1}, y_0..y_{d/2-1}] to
[x_0, y_0, x_1, y_1, ...], which gives the same attention scores. We undo
that on import and redo it on export. ``qwen2``/``qwen3`` use the half (NEOX)
rotation in llama.cpp and are stored unpermuted.

Export writes llama.cpp's keys and names as f32, f16 or q8_0; as llama.cpp
does, 1-D tensors (norms, biases) stay f32, and rows whose length is not a
multiple of the 32-wide q8_0 block fall back to f16.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

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
_EXPORT_TYPES = ("f32", "f16", "q8_0")
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


def _open(path: Path) -> "GGUFReader":
    from gguf import GGUFReader  # deferred: importing gguf costs ~0.2 s

    if not path.is_file():
        raise CheckpointError(f"no such GGUF file: {path}")
    try:
        return GGUFReader(path, "r")
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
    path = Path(path)
    reader = _open(path)
    cfg = _read_config(reader, path)
    arch = reader.fields["general.architecture"].contents()
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.kv_heads}
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:  # folded into the config
            continue
        name = gguf_to_hf(tensor.name)
        w = _dequantize(tensor, path)
        proj = name.rsplit(".", 2)[-2]
        if arch in _PERMUTED_ARCHS and proj in heads:
            w = permute_qk(w, heads[proj], inverse=True)
        state[name] = torch.from_numpy(w).to(dtype or torch.float32)
    return cfg, state


def load_gguf(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> CausalLM:
    """Load a GGUF file (llama, qwen2, qwen3; any quantisation gguf can dequantise) as a CausalLM.

    Args:
        path: the ``.gguf`` file.
        dtype: parameter dtype; None = float32 (what dequantisation yields).
        device: where the parameters live; None = CPU.

    Raises:
        CheckpointError: unreadable file, unsupported architecture or tensor type, missing or
            unexpected tensor, or a shape that does not match the metadata; the message names the file.
    """
    cfg, state = read_gguf(path, dtype)
    return build_from_state_dict(cfg, state, dtype, device, source=str(path))


def export_gguf(model: CausalLM, path: str | Path, dtype: str = "f32",
                tokenizer_metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a GGUF file llama.cpp and transformers can load (written atomically).

    Args:
        model: a CausalLM with a llama-style config (see :func:`~llmkit.io.gguf_config.gguf_arch`).
        path: the ``.gguf`` file to write.
        dtype: "f32", "f16" or "q8_0" for the 2-D weights; 1-D tensors are always f32.
        tokenizer_metadata: ``tokenizer.*`` keys to copy (the vocabulary, merges, special ids, chat
            template), e.g. ``llmkit.tokenizer.gguf_format.read_gguf_metadata(src)`` when re-exporting
            a loaded GGUF. Ints are written as uint32 (int32 inside arrays), floats as float32.

    Raises:
        CheckpointError: the config has no GGUF equivalent.
        ValueError: an unknown ``dtype`` or a non-``tokenizer.`` metadata key.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType, quantize

    if dtype not in _EXPORT_TYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_EXPORT_TYPES)}")
    extra = dict(tokenizer_metadata or {})
    if bad := sorted(k for k in extra if not k.startswith("tokenizer.")):
        raise ValueError(f"tokenizer_metadata may hold only tokenizer.* keys, got {', '.join(bad)}")
    cfg: ModelConfig = model.cfg
    arch = gguf_arch(cfg)
    qtype = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[dtype]
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    meta = {**gguf_metadata(cfg, arch), **extra, "general.file_type": int(file_type),
            "general.quantization_version": GGML_QUANT_VERSION}
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.kv_heads}
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        for key, value in meta.items():
            _add_key(writer, key, value)
        for name, t in model.state_dict().items():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # llama.cpp: no output.weight means tied
            w = t.detach().float().cpu().numpy()
            proj = name.rsplit(".", 2)[-2]
            if arch in _PERMUTED_ARCHS and proj in heads:
                w = permute_qk(w, heads[proj])
            kind = Q.F32 if w.ndim == 1 else qtype
            if kind == Q.Q8_0 and w.shape[-1] % 32:
                kind = Q.F16
            writer.add_tensor(hf_to_gguf(name), quantize(w, kind), raw_dtype=kind)
        if (freqs := llama3_rope_freqs(cfg)) is not None:
            writer.add_tensor(ROPE_FREQS, freqs, raw_dtype=Q.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


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
