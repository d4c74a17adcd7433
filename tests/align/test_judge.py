"""LLM-as-judge: position swap cancels order bias, for a local model and an OpenAI-compatible endpoint."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llmkit import CausalLM
from llmkit.align.judge import Endpoint, grade, judge
from llmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def local(tiny_dir):
    return CausalLM.from_pretrained(tiny_dir).float(), Tokenizer.from_pretrained(tiny_dir)


def test_local_judge_is_antisymmetric_and_ties_identical_answers(local):
    ab = judge(local, "Who wrote Emma?", "Jane Austen.", "Go away.")
    ba = judge(local, "Who wrote Emma?", "Go away.", "Jane Austen.")
    assert ab.p_a == pytest.approx(1 - ba.p_a, abs=1e-6)
    assert 0 < ab.p_a_first < 1 and 0 < ab.p_a_second < 1
    same = judge(local, "Who wrote Emma?", "Jane Austen.", "Jane Austen.")
    assert same.p_a == pytest.approx(0.5, abs=1e-6) and same.winner == "tie"
    assert 1.0 <= grade(local, "Who wrote Emma?", "Jane Austen.") <= 5.0


class _Judge(BaseHTTPRequestHandler):
    """Answers A unless the prompt's Answer B mentions Austen: a judge that knows, and an always-A one."""

    biased = False

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        if "rate the answer" in prompt:
            reply = "4"
        elif self.biased:
            reply = "A"
        else:
            reply = "B" if "Austen" in prompt.split("[Answer B]")[1] else "A"
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("biased", [False, True])
def test_endpoint_judge_with_position_swap(biased):
    handler = type("H", (_Judge,), {"biased": biased})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = Endpoint(f"http://127.0.0.1:{server.server_port}/v1", "judge")
        verdict = judge(endpoint, "Who wrote Emma?", "Go away.", "Jane Austen wrote it.")
        if biased:  # always "A": each order picks the first answer, so the swap makes it a tie
            assert (verdict.p_a_first, verdict.p_a_second, verdict.winner) == (1.0, 0.0, "tie")
        else:
            assert (verdict.p_a, verdict.winner) == (0.0, "b")
        assert grade(endpoint, "Who wrote Emma?", "Jane Austen.") == 4.0
    finally:
        server.shutdown()


def test_a_judge_scores_best_of_n(local, tmp_path):
    from llmkit.align.best_of_n import best_of_n, judge_scorer

    model, tokenizer = local
    records = [{"prompt": [{"role": "user", "content": q}], "where": f"t:{i}"}
               for i, q in enumerate(["Who wrote Emma?", "Name a fruit."])]
    summary = best_of_n(model, tokenizer, records, tmp_path, n=2, max_new_tokens=4, scorer=judge_scorer(local))
    assert summary["kept"] == 2 and 1.0 <= summary["mean_score_first"] <= summary["mean_score_best"] <= 5.0
