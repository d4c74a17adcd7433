"""save_pretrained -> from_pretrained for every scheme: same layers, identical logits, no float weights."""
import copy
import json

import pytest
import torch

from llmkit import CausalLM
from llmkit.io import CheckpointError
from llmkit.quant import QUANT_SCHEMES, QuantLinear, quantize

OPTIONS = {name: ({"group_size": 32} if "group_size" in s.defaults else {}) for name, s in QUANT_SCHEMES.items()}


@pytest.fixture(scope="module")
def base():
    from tests.quant.conftest import TINY

    torch.manual_seed(0)
    return CausalLM(TINY).eval()


@pytest.mark.parametrize("name", list(QUANT_SCHEMES))
def test_save_load_gives_identical_logits(name, base, tmp_path):
    calib = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(2))
    q = quantize(copy.deepcopy(base), name, calib if QUANT_SCHEMES[name].calibrated else None, **OPTIONS[name])
    q.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config == q.quantization_config and config["quant_method"] == name
    loaded = CausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded(ids), q(ids))
    layers = [type(m) for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert layers == [type(m) for m in q.modules() if isinstance(m, QuantLinear)]
    # the quantised weights arrive as they were stored: no float copy of a block linear
    floats = [n for n, t in loaded.state_dict().items() if "layers" in n and t.is_floating_point()
              and t.element_size() > 1 and t.dim() == 2 and min(t.shape) > 2]
    assert not floats


def test_bf16_load_keeps_int_codes_and_casts_scales(base, tmp_path):
    quantize(copy.deepcopy(base), "int8").save_pretrained(tmp_path)
    loaded = CausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    layer = loaded.model.layers[0].mlp.up_proj
    assert layer.weight.dtype == torch.int8 and layer.scales.dtype == torch.bfloat16
    assert layer.compute_dtype == torch.bfloat16 and loaded.dtype == torch.bfloat16


def test_a_mismatched_quantized_checkpoint_is_a_clear_error(base, tmp_path):
    quantize(copy.deepcopy(base), "int4", group_size=32).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    raw["quantization_config"]["group_size"] = 64
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"scales_and_zeros has shape .* \(does quantization_config match"):
        CausalLM.from_pretrained(tmp_path)
    raw["quantization_config"] = {"quant_method": "int5"}
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown quantization scheme 'int5'"):
        CausalLM.from_pretrained(tmp_path)
    raw["quantization_config"] = {"quant_method": "int4", "group_size": 48}
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="q_proj: group_size=48"):
        CausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj"]])
def test_merged_lora_on_a_quantized_base_saves_what_it_holds(base, tmp_path, targets):
    from llmkit.peft import apply_lora, merge_and_unload

    model = merge_and_unload(apply_lora(quantize(copy.deepcopy(base), "int8"), targets, r=2))
    model.save_pretrained(tmp_path)
    loaded = CausalLM.from_pretrained(tmp_path)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    ids = torch.randint(0, 96, (1, 8))
    assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_a_quantized_head_of_a_tied_model_saves_its_own_tensors(name, tmp_path):
    """Quantising the LM head of a tied model unties it: the embedding stays float, the head is saved and reloaded."""
    import dataclasses

    from tests.quant.conftest import TINY

    torch.manual_seed(0)
    model = CausalLM(dataclasses.replace(TINY, tie_word_embeddings=True)).eval()
    embedding = model.model.embed_tokens.weight.detach().clone()
    q = quantize(model, name, skip=("embed_tokens",), **OPTIONS[name])
    assert isinstance(q.lm_head, QuantLinear) and not q.lm_head_tied
    assert torch.equal(q.model.embed_tokens.weight, embedding)
    q.save_pretrained(tmp_path)
    loaded = CausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, QuantLinear) and loaded.cfg.tie_word_embeddings
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded(ids), q(ids))
    assert torch.equal(loaded.model.embed_tokens.weight, embedding)
    # the default (float head) stays tied through a save
    quantize(CausalLM(dataclasses.replace(TINY, tie_word_embeddings=True)), name, **OPTIONS[name]).save_pretrained(
        tmp_path / "tied")
    assert CausalLM.from_pretrained(tmp_path / "tied").lm_head_tied
