"""``llmkit generate`` and ``llmkit chat`` in-process, on a tiny random checkpoint with a trained tokenizer."""
import io
import sys

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.generate import generate, load_model_and_tokenizer
from llmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A directory holding a tiny random CausalLM and a small trained tokenizer, side by side."""
    text = "Hello there. How are you today? I am fine, thank you. The weather is nice.\n" * 30
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                      max_seq_len=96, init_std=0.2)
    path = tmp_path_factory.mktemp("tiny_chat_model")
    CausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_same_text_as_the_library(tiny_dir, capsys):
    code, out, err = _run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "Hello there.",
                          "--temperature", "0", "--max_new_tokens", "12", "--raw")
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    assert out == generate(model, tok, "Hello there.", max_new_tokens=12).text + "\n"


def test_generate_uses_the_chat_template_when_the_model_has_one(tiny_dir, capsys):
    code, out, err = _run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "Hello there.",
                          "--temperature", "0", "--max_new_tokens", "12")
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    assert tok.chat_template
    chat = [{"role": "user", "content": "Hello there."}]
    assert out == generate(model, tok, chat, max_new_tokens=12).text + "\n"


def test_generate_seed_and_beams(tiny_dir, capsys):
    args = ["generate", "--prompt", "How are you", "--model", str(tiny_dir), "--max_new_tokens", "10", "--seed", "3"]
    first, second = (_run(capsys, *args)[1] for _ in range(2))
    assert first == second and first.strip()
    code, out, err = _run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "Hello", "--num_beams", "3",
                          "--max_new_tokens", "6", "--raw")
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    assert out == generate(model, tok, "Hello", num_beams=3, max_new_tokens=6).text + "\n"


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_generate_with_a_quantized_kv_cache(tiny_dir, capsys, kv):
    code, out, err = _run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "Hello there.", "--raw",
                          "--temperature", "0", "--max_new_tokens", "12", "--kv-cache-dtype", kv)
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    assert out == generate(model, tok, "Hello there.", max_new_tokens=12, kv_cache_dtype=kv).text + "\n"


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--top_k", "-2"], "--top_k must be >= 0"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--num_beams", "2", "--temperature", "0.5"], "does not sample"),
    (["--model", "no-such-model"], "'no-such-model'"),
    (["--model", "/nonexistent/model.gguf"], "no such model file"),
    (["--prompt", "Hello there. " * 60], "context"),
    (["--prompt", ""], "give a prompt"),
    (["--adapter", "/nonexistent/adapter"], "--adapter"),
    (["--kv-cache-dtype", "int4"], "--kv_cache_dtype: 'int4' is not one of auto, int8, fp8"),
])
def test_generate_bad_input_is_one_line_and_exit_code_2(tiny_dir, capsys, flags, message):
    base = ["generate", "--model", str(tiny_dir), "--prompt", "Hello"]
    code, out, err = _run(capsys, *base, *flags)
    assert code == 2
    assert err.startswith("llmkit generate: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_chat_with_piped_stdin_answers_each_line_with_history(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there.\nHow are you today?\n/reset\n\nI am fine.\n"))
    code, out, err = _run(capsys, "chat", "--model", str(tiny_dir), "--temperature", "0", "--max_new_tokens", "8")
    assert code == 0, err
    assert "(conversation reset)" in err
    model, tok = load_model_and_tokenizer(tiny_dir)
    first = generate(model, tok, [{"role": "user", "content": "Hello there."}], max_new_tokens=8).text
    second = generate(model, tok, [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": first},
                                   {"role": "user", "content": "How are you today?"}], max_new_tokens=8).text
    third = generate(model, tok, [{"role": "user", "content": "I am fine."}], max_new_tokens=8).text
    assert out == f"{first}\n{second}\n{third}\n"


def test_chat_system_command_and_flag(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/system Be brief.\nHello there.\n/nope\n"))
    code, out, err = _run(capsys, "chat", "--model", str(tiny_dir), "--temperature", "0", "--max_new_tokens", "6")
    assert code == 0 and "unknown command /nope" in err
    model, tok = load_model_and_tokenizer(tiny_dir)
    expected = generate(model, tok, [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hello there."}], max_new_tokens=6).text
    assert out == expected + "\n"


def test_chat_ctrl_c_stops_the_reply_but_not_the_session(tiny_dir, capsys, monkeypatch):
    import llmkit.generate

    seen = []

    def fake_generate(model, tokenizer, messages, **kwargs):
        seen.append(list(messages))
        yield "partial"
        if len(seen) == 1:
            raise KeyboardInterrupt
        yield " answer"

    lines = iter(["first", "second"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C at the prompt quits

    monkeypatch.setattr(llmkit.generate, "generate", fake_generate)
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", fake_input)
    code, out, err = _run(capsys, "chat", "--model", str(tiny_dir))
    assert code == 0
    assert "partial\npartial answer\n" in out
    assert seen[1][-2] == {"role": "assistant", "content": "partial"}  # the interrupted reply stays in history


def test_generate_and_chat_on_smollm2(smollm2_gguf, capsys, monkeypatch):
    code, out, err = _run(capsys, "generate", "--model", str(smollm2_gguf), "--prompt",
                          "The capital of France is", "--temperature", "0", "--max_new_tokens", "6", "--raw")
    assert code == 0 and "Paris" in out, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n"))
    code, out, err = _run(capsys, "chat", "--model", str(smollm2_gguf), "--temperature", "0",
                          "--max_new_tokens", "12")
    assert code == 0 and "Paris" in out, err
