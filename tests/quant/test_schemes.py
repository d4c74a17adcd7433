"""quantize(): every scheme on a tiny model, the swap rules, bad input, decoding and LoRA on top."""
import copy
import warnings

import pytest
import torch
from torch import nn

from llmkit.generate import generate_tokens
from llmkit.peft import apply_lora, merge_and_unload
from llmkit.quant import QUANT_SCHEMES, QuantLinear, quantize

# int4-family groups of 32 fit the tiny model's 64-wide inputs
OPTIONS = {name: ({"group_size": 32} if "group_size" in s.defaults else {}) for name, s in QUANT_SCHEMES.items()}
# relative logit error each scheme stays within on the tiny random model (4-bit is coarser than 8-bit)
TOLERANCE = {"int8": 0.02, "llm_int8": 0.03, "smoothquant": 0.05, "fp8": 0.1, "int4": 0.35, "gptq": 0.3,
             "awq": 0.35, "nf4": 0.35}


def quantized(model, name, calib):
    return quantize(copy.deepcopy(model), name, calib if QUANT_SCHEMES[name].calibrated else None, **OPTIONS[name])


@pytest.mark.parametrize("name", list(QUANT_SCHEMES))
def test_every_scheme_swaps_the_block_linears_and_stays_close(name, tiny, ids, calib):
    q = quantized(tiny, name, calib)
    swapped = [m for m in q.modules() if isinstance(m, QuantLinear)]
    assert len(swapped) == 7 * tiny.cfg.n_layers
    assert type(q.lm_head) is nn.Linear and type(q.model.embed_tokens) is nn.Embedding  # skipped by default
    attn = q.model.layers[0].self_attn.q_proj
    assert (attn.in_features, attn.out_features) == (64, 64)
    ref, out = tiny(ids), q(ids)
    assert (out - ref).norm() / ref.norm() < TOLERANCE[name]
    assert q.quantization_config["quant_method"] == name


def test_calibrated_schemes_beat_round_to_nearest_on_the_model(tiny):
    calib, held_out = torch.randint(0, 96, (48, 32), generator=torch.Generator().manual_seed(3)).split([32, 16])
    ref = tiny(held_out)
    err = {n: (quantized(tiny, n, calib)(held_out) - ref).norm().item() for n in ("int4", "gptq", "awq")}
    assert err["gptq"] < err["int4"] and err["awq"] < err["int4"]


def test_skip_and_calibration_strings(tiny, calib):
    q = quantize(copy.deepcopy(tiny), "int8", skip=("lm_head", "down_proj"))
    assert type(q.model.layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(q.model.layers[0].mlp.up_proj, QuantLinear)

    class Chars:  # a stand-in tokenizer: one id per character
        def encode(self, text):
            return [ord(c) % 96 for c in text]

    q = quantize(copy.deepcopy(tiny), "smoothquant", ["some calibration text", "and more of it"], tokenizer=Chars())
    assert isinstance(q.model.layers[1].self_attn.o_proj, QuantLinear)


def test_bad_input_is_named(tiny, calib):
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        quantize(tiny, "int3")
    with pytest.raises(ValueError, match="scheme 'int8' has no option group_size"):
        quantize(tiny, "int8", group_size=32)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj: group_size=48"):
        quantize(tiny, "int4", group_size=48)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(tiny, "gptq")
    with pytest.raises(ValueError, match="tokenizer="):
        quantize(tiny, "awq", ["text"])
    with pytest.raises(ValueError, match="bits=5"):
        quantize(tiny, "gptq", calib, bits=5)
    with pytest.raises(ValueError, match="add lm_head to skip"):
        quantize(tiny, "gptq", calib, skip=())
    assert not any(isinstance(m, QuantLinear) for m in tiny.modules())  # nothing changed on failure
    quantize(tiny, "int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(tiny, "int4")


@pytest.mark.slow  # compiling the decode step: ~15 s for the first
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_model_decodes_the_same_compiled_and_eager(name, tiny, ids):
    q = quantized(tiny, name, None)
    eager = generate_tokens(q, ids[:1], max_new_tokens=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile failure falls back with a warning: fail instead
        compiled = generate_tokens(q, ids[:1], max_new_tokens=6, compile=True)
    assert compiled.token_ids == eager.token_ids


def test_lora_trains_on_a_quantized_base_and_merges(tiny, ids):
    q = apply_lora(quantized(tiny, "int4", None), "all-linear", r=4)
    loss = q(ids).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for n, p in q.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    merged = merge_and_unload(q)
    assert not any(isinstance(m, QuantLinear) for m in merged.modules())


def test_calibration_ids_are_seeded_windows_of_the_training_text(tmp_path):
    from llmkit.quant.calibrate import calibration_ids

    class Chars:
        def encode(self, text, add_special_tokens=True):
            return [ord(c) % 96 for c in text]

    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i} of the calibration text\n" for i in range(400)))
    ids = calibration_ids(Chars(), str(path), n=6, seq_len=20, seed=1)
    assert ids.shape == (6, 20) and ids.dtype == torch.long
    assert torch.equal(ids, calibration_ids(Chars(), str(path), n=6, seq_len=20, seed=1))
    assert not torch.equal(ids, calibration_ids(Chars(), str(path), n=6, seq_len=20, seed=2))
    with pytest.raises(ValueError, match="no document long enough"):
        calibration_ids(Chars(), str(path), n=1, seq_len=100_000)
