"""``quantize(model, scheme)``: the registry of schemes and the module swap (gpt-fast style).

A scheme is two functions and its options: ``build`` turns one ``nn.Linear``
(plus, for calibrated schemes, the inputs it saw) into a quantised linear, and
``empty`` makes the same layer with empty buffers, which is how a saved model
is rebuilt on the meta device before its tensors are assigned. Which linears
are swapped is decided by one rule, used both when quantising and when
rebuilding: every ``nn.Linear`` whose leaf name is not in ``skip`` (the LM head
by default; embeddings are never linears). The model remembers what was done in
``model.quantization_config`` (the scheme, its options and ``skip``), which
``save_pretrained`` writes to ``config.json``.

Calibrated schemes (``smoothquant``, ``gptq``, ``awq``) walk the decoder blocks
(:mod:`llmkit.quant.calibrate`); the others swap layer by layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmkit.quant import calibrate
from llmkit.quant.awq import search_clip, search_scale
from llmkit.quant.gptq import gptq_quantize, hessian
from llmkit.quant.linear import Fp8Linear, Int4Linear, Int8Linear, QuantLinear
from llmkit.quant.nf4 import Linear4bit
from llmkit.quant.smoothquant import smoothquant_linear
from llmkit.quant.w8a8 import LLMInt8Linear, W8A8Linear

DEFAULT_SKIP = ("lm_head", "embed_tokens")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class QuantScheme:
    """How one scheme quantises a linear and rebuilds it empty.

    build(linear, inputs, **options) -> QuantLinear, inputs (rows, in) or None;
    empty(in_features, out_features, bias, dtype, device, **options) -> QuantLinear.
    """
    build: Callable[..., QuantLinear]
    empty: Callable[..., QuantLinear]
    defaults: dict[str, Any] = field(default_factory=dict)  # every option, with its default (JSON values)
    calibrated: bool = False


def _gptq(linear: nn.Linear, x: torch.Tensor, bits: int, group_size: int, damp: float, block_size: int,
          act_order: bool) -> Int4Linear:
    codes, scale, zero = gptq_quantize(linear.weight, hessian(x), bits, group_size, damp, block_size, act_order)
    return Int4Linear.from_codes(linear, codes, scale, zero, group_size)


def _gptq_empty(i: int, o: int, b: bool, dt: torch.dtype, dev, bits: int, group_size: int, **_) -> Int4Linear:
    if not 2 <= bits <= 4:
        raise ValueError(f"gptq bits={bits}: the int4 container holds 2 to 4 bits")
    return Int4Linear(i, o, b, dt, group_size, device=dev)


def _awq(linear: nn.Linear, x: torch.Tensor, group_size: int, grid: int) -> Int4Linear:
    s, _ = search_scale(linear.weight, x, group_size, grid)
    clip = search_clip(linear.weight.float() * s, x / s, group_size, grid)
    return Int4Linear.from_linear(linear, group_size, smooth=s, clip=clip)


def _nf4_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    if name is not None and name not in _DTYPES:
        raise ValueError(f"nf4 compute_dtype={name!r}: choose from {', '.join(_DTYPES)}")
    return _DTYPES[name] if name else default


QUANT_SCHEMES: dict[str, QuantScheme] = {
    # weight-only int8, symmetric per output channel
    "int8": QuantScheme(
        lambda lin, x, int8_activations: Int8Linear.from_linear(lin, int8_activations=int8_activations),
        lambda i, o, b, dt, dev, int8_activations: Int8Linear(i, o, b, dt, device=dev,
                                                              int8_activations=int8_activations),
        {"int8_activations": False}),
    # weight-only int4, asymmetric per group, round to nearest
    "int4": QuantScheme(
        lambda lin, x, group_size: Int4Linear.from_linear(lin, group_size),
        lambda i, o, b, dt, dev, group_size: Int4Linear(i, o, b, dt, group_size, device=dev),
        {"group_size": 64}),
    # QLoRA's NormalFloat4 with double-quantised scales
    "nf4": QuantScheme(
        lambda lin, x, block_size, double_quant, compute_dtype: Linear4bit.from_linear(
            lin, _nf4_dtype(compute_dtype, lin.weight.dtype), block_size, double_quant),
        lambda i, o, b, dt, dev, block_size, double_quant, compute_dtype: Linear4bit(
            i, o, b, _nf4_dtype(compute_dtype, dt), block_size, double_quant, dev),
        {"block_size": 64, "double_quant": True, "compute_dtype": None}),
    # LLM.int8(): outlier input columns in float, the rest int8 x int8
    "llm_int8": QuantScheme(
        lambda lin, x, threshold: LLMInt8Linear.from_linear(lin, threshold=threshold),
        lambda i, o, b, dt, dev, threshold: LLMInt8Linear(i, o, b, dt, threshold, dev),
        {"threshold": 6.0}),
    # SmoothQuant migration (calibrated), then W8A8
    "smoothquant": QuantScheme(
        lambda lin, x, alpha: smoothquant_linear(lin, x, alpha),
        lambda i, o, b, dt, dev, alpha: W8A8Linear(i, o, b, dt, smooth=True, device=dev),
        {"alpha": 0.5}, calibrated=True),
    # GPTQ int2-4 per group from calibration (Hessian-corrected rounding)
    "gptq": QuantScheme(
        _gptq,
        _gptq_empty,
        {"bits": 4, "group_size": 64, "damp": 0.01, "block_size": 128, "act_order": False}, calibrated=True),
    # AWQ activation-aware scales + clipping, int4
    "awq": QuantScheme(
        _awq,
        lambda i, o, b, dt, dev, group_size, grid: Int4Linear(i, o, b, dt, group_size, smooth=True, device=dev),
        {"group_size": 64, "grid": 20}, calibrated=True),
    # fp8 (e4m3 or e5m2) weights with per-channel scales
    "fp8": QuantScheme(
        lambda lin, x, fmt: Fp8Linear.from_linear(lin, fmt),
        lambda i, o, b, dt, dev, fmt: Fp8Linear(i, o, b, dt, fmt, dev),
        {"fmt": "e4m3"}),
}


def scheme_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the scheme's defaults; ValueError for an unknown scheme or option."""
    if name not in QUANT_SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose from {', '.join(QUANT_SCHEMES)}")
    defaults = QUANT_SCHEMES[name].defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"scheme {name!r} has no option {', '.join(unknown)} "
                         f"(its options: {', '.join(defaults) or 'none'})")
    return {**defaults, **options}


def parse_scheme(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME"`` or ``"NAME:OPTION=VALUE,..."`` (values in YAML: ``true``, ``32``, ``e5m2``) -> (name, options).

    The command line's way to pick a scheme and its options in one flag, e.g. ``int8:int8_activations=true``.
    """
    import yaml

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{spec!r}: options are OPTION=VALUE pairs separated by commas, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    scheme_options(name.strip(), options)  # an unknown scheme or option fails here, with the choices
    return name.strip(), options


def targets(model: nn.Module, skip: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Paths of the plain ``nn.Linear`` layers to swap: neither leaf name nor path in ``skip``, not in ``exclude``."""
    excluded = {*exclude, *skip}
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and name.rsplit(".", 1)[-1] not in skip and name not in excluded]


def mark_float(model: nn.Module, paths: Sequence[str]) -> None:
    """Record that the linears at ``paths`` were dequantised (merging LoRA into them, say).

    They join ``skip`` in ``model.quantization_config``, so a saved model is rebuilt with them in
    float; when no quantised layer is left, the config goes.
    """
    config = getattr(model, "quantization_config", None)
    if not config or not paths:
        return
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        config["skip"] = [*config["skip"], *paths]
    else:
        del model.quantization_config


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` inside ``model``."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _empty(scheme: QuantScheme, linear: nn.Linear, options: dict, dtype: torch.dtype | None, device) -> QuantLinear:
    return scheme.empty(linear.in_features, linear.out_features, linear.bias is not None,
                        dtype or linear.weight.dtype, device, **options)


def check_shapes(model: nn.Module, paths: list[str], scheme: QuantScheme, options: dict) -> None:
    """Build every layer empty on meta first, so a shape the scheme cannot take fails before anything changes."""
    for path in paths:
        try:
            _empty(scheme, model.get_submodule(path), options, None, "meta")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


@torch.no_grad()
def quantize(model: nn.Module, scheme: str, calibration: Sequence[str] | torch.Tensor | None = None, *,
             tokenizer=None, skip: Sequence[str] = DEFAULT_SKIP, exclude: Sequence[str] = (),
             batch_size: int = 8, **options) -> nn.Module:
    """Replace the model's linear layers by quantised ones, in place.

    Args:
        model: a CausalLM (or any module tree; calibrated schemes need decoder blocks).
        scheme: a name in :data:`QUANT_SCHEMES`.
        calibration: list of strings (needs ``tokenizer``) or (N, T) token ids; required by
            ``smoothquant``, ``gptq`` and ``awq``.
        tokenizer: turns calibration strings into ids.
        skip: leaf names (or full paths) left in float (the LM head and embeddings by default).
        exclude: full paths left alone (adapters' own layers).
        batch_size: calibration rows per forward.
        **options: the scheme's options (see ``QUANT_SCHEMES[scheme].defaults``).
    Returns:
        ``model``, with ``model.quantization_config`` describing what was done.
    Raises:
        ValueError: an unknown scheme or option, a layer shape the scheme cannot take (named),
            missing calibration, or a model that is already quantised.
    """
    options = scheme_options(scheme, options)
    spec = QUANT_SCHEMES[scheme]
    if getattr(model, "quantization_config", None):
        raise ValueError(f"the model is already quantised ({model.quantization_config['quant_method']})")
    paths = targets(model, skip, exclude)
    check_shapes(model, paths, spec, options)
    was_training = model.training
    model.eval()
    if spec.calibrated:
        if calibration is None:
            raise ValueError(f"scheme {scheme!r} needs calibration data (a list of strings with tokenizer=, or ids)")
        _quantize_calibrated(model, paths, spec, options, calibrate.calibration_batches(calibration, tokenizer,
                                                                                        batch_size))
    else:
        for path in paths:
            set_module(model, path, spec.build(model.get_submodule(path), None, **options))
    model.train(was_training)
    model.quantization_config = {"quant_method": scheme, **options, "skip": list(skip)}
    return model


def _quantize_calibrated(model: nn.Module, paths: list[str], spec: QuantScheme, options: dict,
                         batches: list[torch.Tensor]) -> None:
    prefix, blocks = calibrate.decoder_blocks(model)
    outside = [p for p in paths if not p.startswith(prefix + ".")]
    if outside:
        raise ValueError(f"calibrated schemes quantise the decoder blocks' linears; add {outside[0].rsplit('.', 1)[-1]}"
                         " to skip")
    if not batches:
        raise ValueError("the calibration data is empty")
    inputs = calibrate.first_block_inputs(model, blocks, batches)
    for i, block in enumerate(blocks):
        start = f"{prefix}.{i}."
        names = [p[len(start):] for p in paths if p.startswith(start)]
        for name, x in calibrate.linear_inputs(block, names, inputs).items():
            set_module(block, name, spec.build(block.get_submodule(name), x, **options))
        if i + 1 < len(blocks):
            inputs = calibrate.next_inputs(block, inputs)


def rebuild(model: nn.Module, config: dict[str, Any], dtype: torch.dtype | None = None) -> nn.Module:
    """Swap in empty quantised layers as ``config`` (a ``quantization_config``) describes, for loading.

    Args:
        model: the float model, typically on the meta device.
        config: ``{"quant_method": name, **options, "skip": [...]}``.
        dtype: compute dtype of the layers; None = each linear's own.
    Raises:
        ValueError: an unknown scheme or option, or a layer shape the options do not fit.
    """
    config = dict(config)
    name = config.pop("quant_method", None)
    skip = config.pop("skip", DEFAULT_SKIP)
    options = scheme_options(name, config)
    spec = QUANT_SCHEMES[name]
    paths = targets(model, skip)
    check_shapes(model, paths, spec, options)
    for path in paths:
        linear = model.get_submodule(path)
        set_module(model, path, _empty(spec, linear, options, dtype, linear.weight.device))
    model.quantization_config = {"quant_method": name, **options, "skip": list(skip)}
    return model
