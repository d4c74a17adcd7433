"""``llmkit eval``: JSON for scripts, results.json rows, a table, and exit code 2 with a one-line error."""
from __future__ import annotations

import json

import pytest

from llmkit.cli import main
from tests.eval.conftest import TEXT


def run(capsys, *argv):
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_perplexity_json(capsys, checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 2)
    code, out, _ = run(capsys, "perplexity", "--model", str(checkpoint), "--data", str(text), "--stride", "16",
                       "--json", "--out", str(tmp_path / "out"))
    assert code == 0
    summary = json.loads(out)  # exactly one JSON object
    assert summary["task"] == "perplexity" and summary["tokens"] > 64 and summary["windows"] > 1
    assert summary["perplexity"] > 1 and summary["bits_per_byte"] > 0
    assert summary["settings"]["window"] == 64 and summary["settings"]["stride"] == 16
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["metric"] for r in rows} == {"perplexity", "bits_per_byte", "nll"}
    assert all(set(r) == {"task", "metric", "value", "stderr", "model", "settings"} for r in rows)
    assert next(r["value"] for r in rows if r["metric"] == "perplexity") == summary["perplexity"]


def test_multiple_choice_table(capsys, checkpoint, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"question": "It is a truth", "choices": ["universally", "never"], "answer": 0})
                    + "\n" + json.dumps({"question": "a good", "choices": ["fortune", "wife"], "answer": 1}) + "\n")
    code, out, _ = run(capsys, "multiple-choice", "--model", str(checkpoint), "--data", str(task),
                       "--out", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr"]
    assert [ln.split()[1] for ln in lines[1:4]] == ["acc", "acc_norm", "acc_bytes"]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["stderr"] is not None and rows[0]["settings"]["data"] == str(task)


@pytest.mark.parametrize("make,argv,message", [
    (lambda d: (d / "empty.txt").write_text(""), ["perplexity", "--data", "{d}/empty.txt"], "empty.txt is empty"),
    (lambda d: (d / "t.jsonl").write_text('{"question": "q", "choices": ["a", "b"]}\n'),
     ["multiple-choice", "--data", "{d}/t.jsonl"], "t.jsonl:1: missing field 'answer'"),
    (None, ["perplexity", "--data", "some text here", "--window", "128"],
     "window=128 is larger than the model's context of 64"),
    (None, ["perplexity", "--data", "nosuchfile.txt"], "no such file or corpus 'nosuchfile.txt'"),
    (None, ["multiple-choice", "--data", "{d}/missing.jsonl"], "no such task file"),
    (None, ["perplexity"], "needs --data"),
    (None, ["bogus"], "unknown task 'bogus'"),
])
def test_bad_input_exits_2(capsys, checkpoint, tmp_path, make, argv, message):
    if make:
        make(tmp_path)
    code, out, err = run(capsys, *[a.format(d=tmp_path) for a in argv], "--model", str(checkpoint),
                         "--out", str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert err.startswith("llmkit eval: error: ") and message in err and err.count("\n") == 1
