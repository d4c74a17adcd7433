"""Evaluation: perplexity, BLEU, ROUGE, multiple choice, passkey retrieval, and an lm-eval-harness adapter.

Metrics on text (``bleu``, ``rouge``) are pure Python and equal to sacrebleu
and rouge-score; everything that runs a model scores token spans through
``scoring.score_spans``. ``llmkit eval TASK`` (llmkit/cli/eval.py) is the
command line; docs/eval.md the guide.
"""
from llmkit.eval.bleu import BLEUResult, corpus_bleu, sentence_bleu
from llmkit.eval.corpus_tasks import builtin_questions
from llmkit.eval.multiple_choice import ChoiceResult, Question, evaluate_choices, read_questions
from llmkit.eval.passkey import PasskeyResult, passkey, plot_heatmap
from llmkit.eval.perplexity import PerplexityResult, perplexity
from llmkit.eval.results import Report
from llmkit.eval.rouge import rouge
from llmkit.eval.scoring import SpanScore, loglikelihoods, score_spans

__all__ = ["BLEUResult", "ChoiceResult", "PasskeyResult", "PerplexityResult", "Question", "Report", "SpanScore",
           "builtin_questions", "corpus_bleu", "evaluate_choices", "loglikelihoods", "passkey", "perplexity",
           "plot_heatmap", "read_questions", "rouge", "score_spans", "sentence_bleu"]
