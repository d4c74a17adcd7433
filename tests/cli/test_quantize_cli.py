"""``llmkit quantize`` and ``--quant`` of generate, in-process on a tiny checkpoint with a trained tokenizer."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.generate import generate, load_model_and_tokenizer
from llmkit.quant import Int4Linear, Int8Linear
from llmkit.tokenizer import Tokenizer

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 40


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tokenizer = Tokenizer.train([TEXT], vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=96, init_std=0.1)
    path = tmp_path_factory.mktemp("tiny_model")
    CausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path.parent / "calib.txt").write_text(TEXT)
    return path


@pytest.mark.slow  # two perplexities, GPTQ and a save: ~5 s on a quiet machine
def test_quantize_reports_and_saves_a_loadable_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", "--model", str(tiny_dir), "--scheme", "gptq", "--bits", "4", "--group-size", "32",
                 "--calib", str(tiny_dir.parent / "calib.txt"), "--calib_samples", "4", "--calib_len", "16",
                 "--eval_tokens", "64", "--out", str(out)])
    text, err = capsys.readouterr()
    assert code == 0, err
    before, after, saved = text.strip().splitlines()
    assert before.startswith("before") and "perplexity" in before and after.startswith("gptq")
    assert float(after.split("MiB")[0].split()[-1]) < float(before.split("MiB")[0].split()[-1])
    assert "saved to" in saved
    model, tok = load_model_and_tokenizer(out)
    assert isinstance(model.model.layers[0].mlp.up_proj, Int4Linear)
    assert model.quantization_config["quant_method"] == "gptq"


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "int9"], "--scheme: 'int9' is not one of"),
    (["--scheme", "int8", "--group-size", "32"], "--group-size: int8 has no groups"),
    (["--scheme", "int4", "--bits", "3"], "--bits 3: int4 is 4-bit only"),
    (["--scheme", "int4", "--group-size", "48"], "group_size=48"),
])
def test_quantize_bad_flags_are_one_line_errors(tiny_dir, tmp_path, capsys, argv, message):
    code = main(["quantize", "--model", str(tiny_dir), "--eval_tokens", "0", "--out", str(tmp_path / "q"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_generate_quantizes_on_load(tiny_dir, capsys):
    code = main(["generate", "--model", str(tiny_dir), "--quant", "int8", "--prompt", "To be", "--raw",
                 "--temperature", "0", "--max_new_tokens", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    from llmkit.quant import quantize

    quantize(model, "int8")
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)
    assert out == generate(model, tok, "To be", max_new_tokens=8).text + "\n"
    assert main(["generate", "--model", str(tiny_dir), "--quant", "gptq", "--prompt", "x"]) == 2
    assert "needs calibration data" in capsys.readouterr().err


def test_generate_takes_scheme_options_after_a_colon(tiny_dir, capsys):
    argv = ["generate", "--model", str(tiny_dir), "--prompt", "To be", "--raw", "--temperature", "0",
            "--max_new_tokens", "8", "--quant"]
    assert main([*argv, "int8:int8_activations=true"]) == 0
    out = capsys.readouterr().out
    model, tok = load_model_and_tokenizer(tiny_dir)
    from llmkit.quant import quantize

    quantize(model, "int8", int8_activations=True)
    assert model.model.layers[0].self_attn.q_proj.int8_activations
    assert out == generate(model, tok, "To be", max_new_tokens=8).text + "\n"
    for bad, message in [("int8:bits=4", "has no option bits"), ("int8:int8_activations", "OPTION=VALUE")]:
        assert main([*argv, bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # loads SmolLM2 twice: ~5 s
def test_generate_quant_gguf_keeps_the_files_blocks(smollm2_gguf, tiny_dir, capsys):
    from llmkit.quant.gguf_linear import GGUFLinear

    argv = ["--prompt", "Hello", "--raw", "--temperature", "0", "--max_new_tokens", "6", "--quant", "gguf"]
    assert main(["generate", "--model", str(smollm2_gguf), *argv]) == 0
    model, tok = load_model_and_tokenizer(smollm2_gguf, keep_quantized=True)
    assert isinstance(model.model.layers[0].mlp.up_proj, GGUFLinear)
    assert capsys.readouterr().out == generate(model, tok, "Hello", max_new_tokens=6).text + "\n"
    assert main(["generate", "--model", str(tiny_dir), *argv]) == 2  # no blocks to keep
    err = capsys.readouterr().err
    assert "--quant gguf keeps the quantised blocks of a .gguf file" in err and len(err.strip().splitlines()) == 1
