"""The state dict -> model builder every loader ends in: config -> meta-device model -> checked tensors -> assign.

The model is built on the ``meta`` device (no memory, no init time) and the
loaded tensors are assigned in place of the meta parameters, so peak memory is
about one copy of the weights. Every key and shape is checked first, and each
mismatch is reported by tensor name. It has a file of its own so that each
format's reader (``hf.py``, ``gguf.py``) and the dispatch over formats
(``load.py``) depend on it without depending on each other.
"""
from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.io.errors import CheckpointError
from llmkit.model import CausalLM


def build_from_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None, source: str = "checkpoint",
                          quantization: dict | None = None) -> CausalLM:
    """A CausalLM for ``cfg`` holding exactly the tensors in ``state``.

    Args:
        cfg: the model's config.
        state: tensors under our (HF) names; a tied ``lm_head.weight`` may be present or not.
        dtype: floating tensors are cast to it; None keeps the first floating tensor's dtype.
        device: where the parameters go; None = where the tensors are.
        source: the checkpoint, named in every error.
        quantization: a ``quantization_config`` (see :mod:`llmkit.quant`): its quantised layers are
            built on meta too, so the file's int tensors are assigned as they are, never dequantised.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: a missing or unexpected tensor, or a shape the config does not expect.
    """
    float_dtype = dtype or next((t.dtype for t in state.values() if _castable(t)), None)
    with torch.device("meta"):
        model = CausalLM(cfg)
    if quantization is not None:
        model = _rebuild_quantized(model, quantization, float_dtype, source)
    expected = model.state_dict()
    tied = model.lm_head_tied  # False in a tied config whose head the quantization config replaced
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{source} is missing {len(missing)} tensor(s) the config needs: {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        raise CheckpointError(f"{source} has {len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:8])}"
                              + (" ..." if len(unexpected) > 8 else ""))
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                                  f"the config expects {tuple(ref.shape)}"
                                  + (" (does quantization_config match the tensors?)" if quantization else ""))
    cast = {k: (v.to(device=device, dtype=float_dtype) if _castable(v) else v.to(device)) for k, v in state.items()}
    model.load_state_dict(cast, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rebuild_buffers(device)  # non-persistent buffers are not in the state dict
    return model.eval()


def _castable(t: torch.Tensor) -> bool:
    """Floating tensors follow the load dtype, except 8-bit floats (fp8 codes of a quantised weight)."""
    return t.is_floating_point() and t.element_size() > 1


def _rebuild_quantized(model: CausalLM, quantization: dict, dtype: torch.dtype | None, source: str) -> CausalLM:
    from llmkit.quant import rebuild  # lazy: only quantised checkpoints need llmkit.quant

    try:
        return rebuild(model, quantization, dtype)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: its quantization_config cannot be applied: {e}") from e
