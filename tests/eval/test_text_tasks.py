"""``llmkit eval bleu|rouge`` on files equal sacrebleu / rouge-score; ``llmkit eval summarize`` scores each method;
the built-in summarisation set's references belong to their chapters."""
from __future__ import annotations

import json
import re

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.eval import rouge
from tests.eval.conftest import TEXT
from tests.eval.text_pairs import real_pairs


def _files(tmp_path, pairs):
    paths = [tmp_path / n for n in ("hyp.txt", "ref1.txt", "ref2.txt")]
    for i, path in enumerate(paths):
        path.write_text("\n".join(p[i].replace("\n", " ") for p in pairs) + "\n")
    return [str(p) for p in paths]


def _run(capsys, *argv):
    code = main(["eval", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_bleu_file_equals_sacrebleu(capsys, tmp_path):
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp, ref1, ref2 = _files(tmp_path, real_pairs(60, seed=3))
    code, got = _run(capsys, "bleu", "--predictions", hyp, "--references", f"{ref1},{ref2}", "--tokenize", "intl",
                     "--out", str(tmp_path / "out"))
    lines = [open(p).read().splitlines() for p in (hyp, ref1, ref2)]
    want = sacrebleu.corpus_bleu(lines[0], lines[1:], tokenize="intl")
    assert code == 0 and f"{got['bleu']:.2f}" == f"{want.score:.2f}" and got["sys_len"] == want.sys_len
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows[0]["task"] == "bleu" and rows[0]["value"] == got["bleu"]


def test_rouge_file_equals_rouge_score(capsys, tmp_path):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyp, ref, _ = _files(tmp_path, real_pairs(40, seed=4))
    code, got = _run(capsys, "rouge", "--predictions", hyp, "--references", ref, "--rouge_types", "rouge1,rougeL",
                     "--out", str(tmp_path))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    pairs = list(zip(open(hyp).read().splitlines(), open(ref).read().splitlines()))
    for kind in ("rouge1", "rougeL"):
        f = [scorer.score(r, h)[kind].fmeasure for h, r in pairs]
        assert got[kind] == pytest.approx(sum(f) / len(f), abs=1e-12)
    assert got["pairs"] == 40 and got["stderr"]["rouge1"] > 0


@pytest.mark.parametrize("argv, message", [
    (["rouge", "--predictions", "{hyp}", "--references", "{short}"], "3 predictions but 1 references"),
    (["bleu", "--predictions", "{hyp}", "--references", "{short}"], "reference stream 0 has 1 lines"),
    (["bleu", "--predictions", "{empty}", "--references", "{hyp}"], "is empty"),
    (["rouge", "--predictions", "{hyp}", "--references", "{hyp},{hyp}"], "one --references file"),
    (["rouge", "--predictions", "{hyp}", "--references", "{hyp}", "--rouge_types", "rouge0"], "unknown ROUGE type"),
    (["bleu", "--predictions", "{hyp}"], "needs --predictions FILE --references FILE"),
    (["summarize", "--methods", "stuff"], "--methods: stuff"),
])
def test_bad_input_exits_2(capsys, tmp_path, argv, message):
    files = {"hyp": "a b\nc d\ne f\n", "short": "a b\n", "empty": ""}
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text)
    code, err = _run(capsys, *[a.format(**{n: tmp_path / f"{n}.txt" for n in files}) for a in argv])
    assert code == 2 and err.startswith("llmkit eval: error: ") and message in err and err.count("\n") == 1


def test_summarize_scores_every_method(capsys, tmp_path, tokenizer, monkeypatch):
    import llmkit.eval.summaries as summaries

    torch.manual_seed(0)
    CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=48,
                         max_seq_len=512)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    pairs = [(TEXT * 3, "a single man of good fortune must be in want of a wife"), (TEXT, "the feelings of a man")]
    monkeypatch.setattr(summaries, "load_pairs", lambda: pairs)
    code, got = _run(capsys, "summarize", "--model", str(tmp_path / "m"), "--chunk_tokens", "48",
                     "--max_new_tokens", "6", "--out", str(tmp_path))
    assert code == 0
    for method in ("map_reduce", "refine", "map_rerank"):
        scores = rouge(got["summaries"][method], [r for _, r in pairs], rouge_types=("rouge1", "rouge2", "rougeL"))
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert got[f"{method}/{kind}"] == pytest.approx(sum(s[kind][2] for s in scores) / 2)
    assert len(json.loads((tmp_path / "results.json").read_text())) == 9


def test_builtin_references_name_their_chapters():
    """Each reference's names (capitalised words inside sentences) occur in its chapter: the pairs are aligned."""
    from llmkit.eval.summaries import load_pairs

    try:
        pairs = load_pairs()
    except (OSError, RuntimeError) as e:  # the corpora are not cached and cannot be fetched here
        pytest.skip(f"corpora unavailable: {e}")
    assert len(pairs) == 7
    for doc, ref in pairs:
        names = set(re.findall(r"(?<=[a-z,] )([A-Z][a-z]+)", ref))
        assert names and all(n in doc for n in names), (sorted(n for n in names if n not in doc), ref[:40])
