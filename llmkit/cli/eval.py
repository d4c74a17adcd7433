"""``llmkit eval TASK``: perplexity, multiple choice, passkey retrieval, BLEU, ROUGE, summarisation.

``bleu`` and ``rouge`` score a predictions file against reference files (one
segment per line, no model). ``summarize`` runs :func:`llmkit.longdoc.summarize`
with each method over the built-in set of :mod:`llmkit.eval.summaries` and
scores ROUGE against its reference summaries. Each model task loads the model once (a name, an HF directory or a ``.gguf``, via
:func:`llmkit.generate.load_model_and_tokenizer`), runs, writes
``OUT/results.json`` (one row per metric: task, metric, value, stderr, model,
settings) and prints a table, or with ``--json`` one JSON object for scripts.
The metrics themselves live in :mod:`llmkit.eval`; this module only maps flags
to calls. lm-eval-harness tasks run through ``python -m llmkit.eval.harness``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from llmkit.eval.results import Report, mean_stderr

TASKS = ("perplexity", "multiple-choice", "passkey", "bleu", "rouge", "summarize")
TEXT_TASKS = ("bleu", "rouge")  # score files; no model
POSITIONALS = {"task": dict(nargs="?", help=f"what to evaluate: {', '.join(TASKS)}")}


@dataclass
class Args:
    task: str = field(default="", metadata={"help": f"what to evaluate: {', '.join(TASKS)}"})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name, HF directory or .gguf file"})
    data: str = field(default="", metadata={"help": (
        "perplexity: a corpus name (its held-out split), a file/folder, or literal text; "
        "multiple-choice: a .jsonl of {question, choices, answer} or a built-in KIND:CORPUS (cloze:shakespeare, "
        "source:austen)")})
    out: str = field(default="eval-out", metadata={"help": "directory for results.json (and passkey.png)"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "weight dtype"})
    batch_size: int = field(default=4, metadata={"help": "sequences per forward pass"})
    window: int | None = field(default=None, metadata={"help": "perplexity: tokens per window (default: the context)"})
    stride: int | None = field(default=None, metadata={"help": "perplexity: tokens between windows (default window/2)"})
    max_tokens: int | None = field(default=None, metadata={"help": "perplexity: score only the first N tokens"})
    limit: int | None = field(default=None, metadata={
        "help": "multiple-choice: questions to use (default: all of a file, 200 generated)"})
    seed: int = field(default=0, metadata={"help": "multiple-choice (built-in) and passkey: random seed"})
    lengths: list[int] = field(default_factory=list, metadata={
        "help": "passkey: comma-separated prompt lengths in tokens (default: 1/8, 1/4, 1/2 and all of the context)"})
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata={
        "help": "passkey: comma-separated needle depths in [0, 1]"})
    trials: int = field(default=3, metadata={"help": "passkey: keys per (length, depth) cell"})
    predictions: str = field(default="", metadata={"help": "bleu/rouge: system outputs, one segment per line"})
    references: list[str] = field(default_factory=list, metadata={
        "help": "bleu/rouge: comma-separated reference files, line i for prediction i (bleu: several streams; "
                "rouge: one)"})
    tokenize: Literal["13a", "intl", "char", "none"] = field(default="13a", metadata={"help": "bleu: tokenizer"})
    smooth_method: Literal["exp", "floor", "add-k", "none"] = field(default="exp", metadata={
        "help": "bleu: smoothing"})
    lowercase: bool = field(default=False, metadata={"help": "bleu: case-insensitive"})
    rouge_types: list[str] = field(default_factory=lambda: ["rouge1", "rouge2", "rougeL"], metadata={
        "help": "rouge/summarize: comma-separated types (rouge1..rouge9, rougeL, rougeLsum)"})
    use_stemmer: bool = field(default=False, metadata={"help": "rouge/summarize: Porter-stem words (as rouge-score)"})
    methods: list[str] = field(default_factory=lambda: ["map_reduce", "refine", "map_rerank"], metadata={
        "help": "summarize: comma-separated methods"})
    chunk_tokens: int = field(default=512, metadata={"help": "summarize: document tokens per call"})
    max_new_tokens: int = field(default=100, metadata={"help": "summarize: length limit of each call's output"})

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"give a task: llmkit eval {{{','.join(TASKS)}}} --model M ..." if not self.task
                             else f"unknown task {self.task!r}: choose from {', '.join(TASKS)}")
        if self.task in ("perplexity", "multiple-choice") and not self.data:
            raise ValueError(f"llmkit eval {self.task} needs --data")
        if self.task in TEXT_TASKS and not (self.predictions and self.references):
            raise ValueError(f"llmkit eval {self.task} needs --predictions FILE --references FILE")
        if self.task == "rouge" and len(self.references) != 1:
            raise ValueError(f"rouge takes one --references file, got {len(self.references)}")
        from llmkit.longdoc.summarize import METHODS

        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"--methods: {', '.join(bad) or 'none given'}: choose from {', '.join(METHODS)}")
        for name in ("batch_size", "trials", "chunk_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("window", "stride", "max_tokens", "limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


def _perplexity(args: Args, model, tokenizer) -> Report:
    from llmkit.eval.perplexity import perplexity, resolve_text

    text, description = resolve_text(args.data)
    r = perplexity(model, tokenizer, text, window=args.window, stride=args.stride, max_tokens=args.max_tokens,
                   batch_size=args.batch_size)
    return Report("perplexity", args.model,
                  {"perplexity": (r.perplexity, None), "bits_per_byte": (r.bits_per_byte, None), "nll": (r.nll, None)},
                  settings=dict(data=description, window=r.window, stride=r.stride, max_tokens=args.max_tokens),
                  extras=dict(tokens=r.tokens, bytes=r.bytes, windows=r.windows))


def _multiple_choice(args: Args, model, tokenizer) -> Report:
    from llmkit.eval.corpus_tasks import builtin_questions
    from llmkit.eval.multiple_choice import evaluate_choices, read_questions

    if args.data.endswith(".jsonl"):
        questions = read_questions(args.data)[:args.limit]
    else:
        questions = builtin_questions(args.data, n=args.limit or 200, seed=args.seed)
    r = evaluate_choices(model, tokenizer, questions, batch_size=args.batch_size)
    return Report("multiple-choice", args.model, r.metrics(), settings=dict(data=args.data, seed=args.seed),
                  extras=dict(questions=r.n))


def _passkey(args: Args, model, tokenizer) -> Report:
    from pathlib import Path

    from llmkit.eval.passkey import passkey, plot_heatmap
    from llmkit.eval.scoring import context_length

    ctx = context_length(model)
    lengths = args.lengths or [ctx // 8, ctx // 4, ctx // 2, ctx - 16]
    r = passkey(model, tokenizer, lengths, args.depths, trials=args.trials, seed=args.seed,
                batch_size=args.batch_size)
    png = plot_heatmap(r, Path(args.out) / "passkey.png", title=f"Passkey: {Path(args.model).name}")
    hits = [a for row in r.accuracy for a in row]  # each cell's mean over trials; all cells have r.trials
    outcomes = [1.0] * round(sum(hits) * r.trials) + [0.0] * round((len(hits) - sum(hits)) * r.trials)
    return Report("passkey", args.model, {"accuracy": (r.mean, mean_stderr(outcomes))},
                  settings=dict(lengths=list(r.lengths), depths=list(r.depths), trials=r.trials, seed=args.seed),
                  extras=dict(grid=[list(row) for row in r.accuracy], heatmap=str(png)))


def _lines(path: str) -> list[str]:
    """The lines of a predictions or references file (a clear error if it is missing or empty)."""
    from pathlib import Path

    from llmkit.cli.args import UsageError

    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise UsageError(f"{path} is empty")
    return lines


def _bleu(args: Args) -> Report:
    from llmkit.cli.args import UsageError
    from llmkit.eval.bleu import corpus_bleu

    try:
        r = corpus_bleu(_lines(args.predictions), [_lines(p) for p in args.references], tokenize=args.tokenize,
                        smooth_method=args.smooth_method, lowercase=args.lowercase)
    except ValueError as e:  # streams of different lengths
        raise UsageError(str(e)) from None
    return Report("bleu", args.predictions, {"bleu": (r.score, None)},
                  settings=dict(references=args.references, tokenize=args.tokenize, smooth_method=args.smooth_method,
                                lowercase=args.lowercase),
                  extras=dict(precisions=r.precisions, bp=r.bp, sys_len=r.sys_len, ref_len=r.ref_len))


def _rouge(args: Args) -> Report:
    from llmkit.cli.args import UsageError
    from llmkit.eval.summaries import rouge_report

    try:
        return rouge_report("rouge", args.predictions, _lines(args.predictions), _lines(args.references[0]),
                            tuple(args.rouge_types), args.use_stemmer, {"references": args.references[0]})
    except ValueError as e:  # different line counts, an unknown type
        raise UsageError(str(e)) from None


def _summarize(args: Args, model, tokenizer) -> Report:
    """ROUGE of each summarisation method on the built-in set; one metric per (method, type)."""
    from llmkit.eval.summaries import load_pairs, rouge_report
    from llmkit.longdoc import LocalLLM, summarize

    pairs = load_pairs()
    llm = LocalLLM(model, tokenizer)
    metrics, outputs = {}, {}
    for method in args.methods:
        outputs[method] = [summarize(doc, llm, method=method, chunk_tokens=args.chunk_tokens,
                                     max_new_tokens=args.max_new_tokens,
                                     question="What happens in this text?").text for doc, _ in pairs]
        r = rouge_report("summarize", args.model, outputs[method], [ref for _, ref in pairs],
                         tuple(args.rouge_types), args.use_stemmer)
        metrics.update({f"{method}/{k}": v for k, v in r.metrics.items()})
    return Report("summarize", args.model, metrics,
                  settings=dict(methods=args.methods, chunk_tokens=args.chunk_tokens,
                                max_new_tokens=args.max_new_tokens, rouge_types=args.rouge_types,
                                use_stemmer=args.use_stemmer),
                  extras=dict(pairs=len(pairs), summaries=outputs))


RUNNERS = {"perplexity": _perplexity, "multiple-choice": _multiple_choice, "passkey": _passkey,
           "summarize": _summarize}
TEXT_RUNNERS = {"bleu": _bleu, "rouge": _rouge}


def run(args: Args) -> int:
    if args.task in TEXT_RUNNERS:
        report = TEXT_RUNNERS[args.task](args)
    else:
        import torch

        from llmkit.generate import load_model_and_tokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=device)
        report = RUNNERS[args.task](args, model, tokenizer)
    path = report.write(args.out)
    if args.json:
        print(json.dumps(report.summary()))
    else:
        print(report.table())
        print(f"wrote {path}")
    return 0
