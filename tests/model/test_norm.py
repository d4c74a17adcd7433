"""`NORMS` is the registry `build_norm` reads, and it names exactly the norms `ModelConfig.norm` allows."""
import typing

import pytest
import torch

from llmkit.config import NormType
from llmkit.model.norm import NORMS, LayerNorm, RMSNorm, build_norm


def test_registry_matches_the_config_literal():
    assert set(NORMS) == set(typing.get_args(NormType))


def test_build_norm_by_name():
    rms, ln, ln_nobias = build_norm("rmsnorm", 8, 1e-6), build_norm("layernorm", 8, 1e-5), build_norm(
        "layernorm", 8, 1e-5, bias=False)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6 and rms.weight.shape == (8,)
    assert isinstance(ln, LayerNorm) and ln.bias.shape == (8,) and ln_nobias.bias is None
    x = torch.randn(2, 3, 8)
    assert torch.allclose(ln(x), torch.nn.functional.layer_norm(x, (8,), eps=1e-5), atol=1e-6)


def test_unknown_norm_lists_the_registry():
    with pytest.raises(ValueError, match=r"unknown norm 'batchnorm'; expected one of \['layernorm', 'rmsnorm'\]"):
        build_norm("batchnorm", 8, 1e-5)
