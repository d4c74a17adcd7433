"""summarize: each method's flow with a scripted LLM, an OpenAI-compatible endpoint, a real llmkit model, the CLI."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.longdoc import OpenAIChat, summarize
from llmkit.tokenizer import Tokenizer

DOC = " ".join(f"Sentence number {i} is here." for i in range(40))  # 5 words each


class Scripted:
    """An LLM that counts words as tokens and answers with a tag naming the call, recording prompts."""

    context = 100

    def __init__(self):
        self.calls: list[list[str]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, prompts, max_new_tokens):
        self.calls.append(list(prompts))
        n = len(self.calls)
        return [f"S{n}.{i} Score: {(7 * i + n) % 10}" for i in range(len(prompts))]


def test_map_reduce_maps_in_one_batch_then_reduces_to_one():
    llm = Scripted()
    out = summarize(DOC, llm, chunk_tokens=20, max_new_tokens=10)
    assert len(out.chunks) == 10 and len(llm.calls[0]) == 10  # all chunks in one parallel call
    assert [len(s) for s in out.steps] == [len(c) for c in llm.calls] and out.steps[-1] == [out.text]
    assert all(len(s) < len(prev) for prev, s in zip(out.steps, out.steps[1:]))  # every round shrinks
    assert out.steps[0][0] in llm.calls[1][0]  # the reduce prompt holds the map outputs


def test_refine_carries_the_running_summary_through_the_chunks():
    llm = Scripted()
    out = summarize(DOC, llm, method="refine", chunk_tokens=25, max_new_tokens=10)
    assert all(len(c) == 1 for c in llm.calls) and len(llm.calls) == len(out.chunks)
    for i in range(1, len(llm.calls)):
        assert out.steps[i - 1][0] in llm.calls[i][0] and out.chunks[i] in llm.calls[i][0]
    assert out.text == out.steps[-1][0]


def test_map_rerank_returns_the_best_scored_answer():
    out = summarize(DOC, Scripted(), method="map_rerank", chunk_tokens=20, max_new_tokens=10)
    best = max(range(len(out.scores)), key=lambda i: (out.scores[i], -i))
    assert out.text == f"S1.{best}" and out.scores[best] == 9


def test_chunks_that_cannot_fit_and_empty_text_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        summarize(DOC, Scripted(), chunk_tokens=95)
    with pytest.raises(ValueError, match="empty"):
        summarize("  ", Scripted(), chunk_tokens=20, max_new_tokens=10)
    with pytest.raises(ValueError, match="method"):
        summarize(DOC, Scripted(), method="stuff")


@pytest.fixture
def endpoint():
    """A local OpenAI-compatible server answering 'summary of N words'; yields (base_url, received bodies)."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            words = len(body["messages"][0]["content"].split())
            message = {"role": "assistant", "content": f"summary of {words} words"}
            reply = json.dumps({"choices": [{"message": message}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", received
    server.shutdown()


def test_openai_compatible_endpoint(endpoint):
    url, received = endpoint
    out = summarize(DOC, OpenAIChat(url, "m", context=200), chunk_tokens=60, max_new_tokens=20)
    assert out.text.startswith("summary of") and received[0]["model"] == "m" and received[0]["max_tokens"] == 20
    with pytest.raises(RuntimeError, match="endpoint"):
        OpenAIChat("http://127.0.0.1:9/v1", "m", timeout=2).complete(["hi"], 5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    text = "Hello there. How are you today? I am fine, thank you. The weather is nice.\n" * 30
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=48, max_seq_len=320,
                      init_std=0.2)
    path = tmp_path_factory.mktemp("tiny_summarizer")
    CausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_with_an_llmkit_model(tiny_dir, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("Hello there. How are you today? I am fine, thank you. " * 12)
    code = main(["summarize", str(doc), "--model", str(tiny_dir), "--chunk_tokens", "40", "--max_new_tokens", "8",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "map_reduce" and len(result["chunks"]) > 1
    assert len(result["steps"][0]) == len(result["chunks"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["summarize", str(empty), "--model", str(tiny_dir)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "missing.txt")]) == 2
