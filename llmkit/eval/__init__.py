"""Evaluation: perplexity, BLEU, ROUGE, multiple choice, passkey retrieval, and an lm-eval-harness adapter.

Metrics on text (``bleu``, ``rouge``) are pure Python and equal to sacrebleu
and rouge-score; everything that runs a model scores token spans through
``scoring.score_spans``. ``llmkit eval TASK`` (llmkit/cli/eval.py) is the
command line; docs/eval.md the guide.
"""
from llmkit.eval.bleu import BLEUResult, corpus_bleu, sentence_bleu
from llmkit.eval.perplexity import PerplexityResult, perplexity
from llmkit.eval.rouge import rouge
from llmkit.eval.scoring import SpanScore, score_spans

__all__ = ["BLEUResult", "PerplexityResult", "SpanScore", "corpus_bleu", "perplexity", "rouge", "score_spans",
           "sentence_bleu"]
