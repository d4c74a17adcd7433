"""``llmkit serve`` flags: bad values are one-line errors with exit code 2."""
from __future__ import annotations

import contextlib

import pytest

from llmkit.cli import main


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max_queue", "-1"], "--max_queue >= 0"),
    (["--lora", "nodir"], "--lora: expected NAME=DIR, got 'nodir'"),
    (["--lora", "a=/no/such/adapter"], "--lora a: /no/such/adapter is not a peft adapter directory"),
    (["--lora", "a=x", "--lora", "a=y"], "--lora: the name 'a' is taken"),
    (["--quant", "gptq"], "--quant: scheme 'gptq' needs calibration"),
    (["--quant", "int8:bits=4"], "--quant: scheme 'int8' has no option bits"),
])
def test_bad_flags(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmkit serve: error:") and message in err and err.count("\n") == 1


def test_lora_flag_repeats_and_reads_yaml(tmp_path):
    import argparse

    from llmkit.cli.args import add_dataclass_arguments, parse_dataclass
    from llmkit.cli.serve import Args

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Args)
    args = parse_dataclass(Args, parser.parse_args(["--lora", "a=/x", "--lora", "b=/y,c=/z"]))
    assert args.lora_adapters() == {"a": "/x", "b": "/y", "c": "/z"}
    config = tmp_path / "serve.yaml"
    config.write_text("lora:\n  - sql=/adapters/sql\n  - chat=/adapters/chat\n")
    args = parse_dataclass(Args, parser.parse_args(["--config", str(config)]))
    assert args.lora_adapters() == {"sql": "/adapters/sql", "chat": "/adapters/chat"}


def test_served_name():
    from llmkit.cli.serve import Args

    assert Args(model="/models/smol.Q8_0.gguf").served_name() == "smol.Q8_0"
    assert Args(model="/ckpt/my-model/").served_name() == "my-model"
    assert Args(model="x", served_model_name="y").served_name() == "y"


@contextlib.contextmanager
def serving(argv: list[str]):
    """``python -m llmkit serve ARGV`` on a free loopback port; yields its URL once /health says 200."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", *argv, "--port", str(port),
                             "--log_level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_llmkit_serve_end_to_end(tiny, tokenizer, tmp_path):
    """The verb itself: a saved checkpoint served by ``python -m llmkit serve`` answers /health, then a completion,
    also under a LoRA adapter given by ``--lora``."""
    import httpx

    from tests.engine.test_multi_lora import make_adapter

    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    make_adapter(tiny, tmp_path / "adapter", 0, target_modules=["q_proj"], r=2)
    with serving(["--model", str(tmp_path), "--served_model_name", "tiny", "--kv_cache_memory", "16MiB",
                  "--compile", "false", "--lora", f"ad={tmp_path / 'adapter'}"]) as url:
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 3,
                                                      "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        r = httpx.post(f"{url}/v1/completions", json={"model": "ad", "prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "ad"
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny", "ad"]
        assert httpx.get(f"{url}/").text.startswith("<!doctype html>")


@pytest.mark.slow
def test_llmkit_serve_quantizes_on_load(tiny, tokenizer, tmp_path):
    """``--quant int8``: the server's greedy completion is the int8-quantised model's, not the float one's."""
    import copy

    import httpx

    from llmkit.engine import LLM
    from llmkit.generate import SamplingParams
    from llmkit.quant import quantize

    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompt, params = "Hello there", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)

    def first_logprob(model) -> tuple[str, float]:
        out = LLM(model, tokenizer=tokenizer, kv_cache_memory="16MiB").generate([prompt], params, use_tqdm=False)
        completion = out[0].outputs[0]
        return completion.text, next(iter(completion.logprobs[0].values()))  # the chosen token's comes first

    expected = first_logprob(quantize(copy.deepcopy(tiny), "int8"))
    assert expected != first_logprob(tiny)  # the float model answers otherwise: the check below can fail
    with serving(["--model", str(tmp_path), "--served_model_name", "tiny", "--kv_cache_memory", "16MiB",
                  "--compile", "false", "--quant", "int8"]) as url:
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 12,
                                                      "temperature": 0, "ignore_eos": True, "logprobs": 1}, timeout=60)
        choice = r.json()["choices"][0]
        assert r.status_code == 200
        assert choice["text"] == expected[0]
        assert choice["logprobs"]["token_logprobs"][0] == pytest.approx(expected[1], abs=1e-5)
