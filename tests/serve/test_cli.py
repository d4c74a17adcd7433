"""``llmkit serve`` flags: bad values are one-line errors with exit code 2."""
from __future__ import annotations

import pytest

from llmkit.cli import main


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max_queue", "-1"], "--max_queue >= 0"),
    (["--lora", "nodir"], "--lora: expected NAME=DIR, got 'nodir'"),
    (["--lora", "a=/no/such/adapter"], "--lora a: /no/such/adapter is not a peft adapter directory"),
    (["--lora", "a=x", "--lora", "a=y"], "--lora: the name 'a' is taken"),
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


@pytest.mark.slow
def test_llmkit_serve_end_to_end(tiny, tokenizer, tmp_path):
    """The verb itself: a saved checkpoint served by ``python -m llmkit serve`` answers /health, then a completion,
    also under a LoRA adapter given by ``--lora``."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from tests.engine.test_multi_lora import make_adapter

    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    make_adapter(tiny, tmp_path / "adapter", 0, target_modules=["q_proj"], r=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "--model", str(tmp_path), "--port", str(port),
                             "--served_model_name", "tiny", "--kv_cache_memory", "16MiB", "--log_level", "warning",
                             "--compile", "false", "--lora", f"ad={tmp_path / 'adapter'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 3,
                                                      "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        r = httpx.post(f"{url}/v1/completions", json={"model": "ad", "prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "ad"
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny", "ad"]
        assert httpx.get(f"{url}/").text.startswith("<!doctype html>")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
