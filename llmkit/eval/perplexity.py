"""Perplexity and bits per byte of a text, with a sliding window so every token is scored with context.

Windowing follows transformers' documented strided recipe ("Perplexity of
fixed-length models"): windows of ``window`` tokens start every ``stride``
tokens, the last one ending at the text's end, and each window scores only
the tokens the previous windows have not, so each token is scored once with at
least ``window - stride`` tokens of context (all tokens before it, while the
text fits one window). ``stride = window`` would leave each window's first
token unscored, so the stride must be smaller.

One difference from the recipe's code: it weights each window's mean loss by
``trg_len - 1`` tokens, but after the first window the model's internal label
shift drops none of the ``trg_len`` targets (they all have context in the
window), so its average is very slightly off. Here the total is the exact sum
over scored tokens; tests/eval/test_perplexity.py shows both the per-window
losses and the exact total equal transformers' on the same checkpoint.

The text is prefixed with the tokenizer's BOS (else EOS) token, as
lm-eval-harness's rolling log-likelihood does, so its first token is scored
too and bits per byte covers every byte: ``bpb = total NLL / ln 2 / UTF-8 bytes``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llmkit.eval.scoring import context_length, score_spans


@dataclass(frozen=True)
class PerplexityResult:
    """Attributes:
        perplexity: ``exp(nll)``.
        bits_per_byte: total NLL in bits over the text's UTF-8 bytes (tokenizer-independent).
        nll: mean negative log-likelihood per scored token (nats).
        tokens: tokens scored.
        bytes: UTF-8 bytes of the text scored.
        window: tokens per window.
        stride: tokens between window starts.
        windows: forward passes made.
    """

    perplexity: float
    bits_per_byte: float
    nll: float
    tokens: int
    bytes: int
    window: int
    stride: int
    windows: int


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """transformers' strided windows over ``n`` tokens as ``(begin, end, n_targets)``: ids[begin:end] is
    the model's input and its last ``n_targets`` ids are scored (the first id of a text never is)."""
    if not 1 <= stride < window:
        raise ValueError(f"stride must be in [1, window={window}), got {stride}: a stride equal to the window "
                         "would leave each window's first token unscored")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        targets = end - max(prev_end, begin + 1)
        if targets > 0:
            out.append((begin, end, targets))
        prev_end = end
        if end == n:
            break
    return out


def resolve_window(model, window: int | None, stride: int | None) -> tuple[int, int]:
    """``(window, stride)`` with the defaults filled in: the model's context, and half the window."""
    ctx = context_length(model)
    window = window or ctx
    if window > ctx:
        raise ValueError(f"window={window} is larger than the model's context of {ctx} tokens")
    return window, stride or max(window // 2, 1)


def windowed_nll(model, ids: list[int], *, window: int | None = None, stride: int | None = None,
                 batch_size: int = 4) -> tuple[float, int, list[tuple[int, int, int]]]:
    """Total NLL (nats) of ``ids[1:]`` scored by sliding windows.

    Args:
        ids: token ids; the first one is context only.
        window: tokens per forward pass; default the model's context length.
        stride: tokens between window starts; default ``window // 2``.
        batch_size: windows per forward pass.
    Returns:
        ``(total_nll, n_scored, windows)``.
    Raises:
        ValueError: a window larger than the model's context, a bad stride, or fewer than 2 tokens.
    """
    window, stride = resolve_window(model, window, stride)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(ids)}")
    windows = sliding_windows(len(ids), window, stride)
    # score_spans reads row[:-1]: a window's last id is only ever a target, so dropping it changes nothing
    scores = score_spans(model, [ids[b:e] for b, e, _ in windows], [k for _, _, k in windows], batch_size)
    return -sum(s.logprob for s in scores), sum(s.n_tokens for s in scores), windows


def perplexity(model, tokenizer, text: str, *, window: int | None = None, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 4) -> PerplexityResult:
    """Perplexity and bits per byte of ``text``.

    Args:
        model: a causal LM (``CausalLM`` or anything with its interface).
        tokenizer: the model's tokenizer (``encode``, ``bos_id``, ``eos_id``, ``decode``).
        text: the text to score.
        window: tokens per forward pass; default the model's context length.
        stride: tokens between window starts; default ``window // 2``.
        max_tokens: score only the text's first this-many tokens (bytes counted to match).
        batch_size: windows per forward pass.
    Returns:
        The :class:`PerplexityResult`.
    Raises:
        ValueError: empty text, or a bad window or stride.
    """
    if not text.strip():
        raise ValueError("the text to score is empty")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is not None:
        ids = [prefix] + ids
    else:  # nothing to condition the first token on: it and its bytes are left out
        text = text[len(tokenizer.decode(ids[:1])):]
    window, stride = resolve_window(model, window, stride)
    nll, n, windows = windowed_nll(model, ids, window=window, stride=stride, batch_size=batch_size)
    n_bytes = len(text.encode("utf-8"))
    return PerplexityResult(perplexity=math.exp(nll / n), bits_per_byte=nll / math.log(2) / n_bytes, nll=nll / n,
                            tokens=n, bytes=n_bytes, window=window, stride=stride, windows=len(windows))


def resolve_text(source: str) -> tuple[str, str]:
    """``(text, description)`` of a text source: a corpus name, a file or folder, or literal text.

    A corpus in :data:`llmkit.data.CORPORA` gives its held-out split (the whole corpus if it has
    none); a path is read by :func:`llmkit.data.load_corpus` (``.txt``, a folder of them,
    ``.jsonl``, ``.parquet``); anything else with whitespace in it is the text itself.

    Raises:
        FileNotFoundError: a single word that is neither a corpus nor a path.
        ValueError: an empty file or corpus.
    """
    from pathlib import Path

    from llmkit.data import CORPORA, load_corpus, split_documents

    if source in CORPORA:
        docs = load_corpus(source)
        val = split_documents(docs, source)[1]
        docs, description = (val, f"{source} (held-out split)") if val else (docs, source)
    elif Path(source).expanduser().exists():
        docs, description = load_corpus(source), source
    elif any(c.isspace() for c in source):
        return source, f"literal text ({len(source)} characters)"
    else:
        raise FileNotFoundError(f"no such file or corpus {source!r} (corpora: {', '.join(CORPORA)}); "
                                "literal text to score must contain a space")
    text = "\n\n".join(d.text for d in docs)
    if not text.strip():
        raise ValueError(f"{source} is empty: no text to score")
    return text, description
