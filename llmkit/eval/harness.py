"""lm-eval-harness adapter: any llmkit model as lm_eval's ``llmkit`` model.

Importing this module registers :class:`LlmkitLM` under the name ``llmkit``
in lm_eval's model registry, and llmkit's package metadata declares it in the
``lm_eval.models`` entry-point group. lm_eval releases after 0.4.13 discover
that group (lm-evaluation-harness PR #4013, "runtime plugin registration
for model backends"), so their own ``lm_eval --model llmkit ...`` works as is.
0.4.13 and earlier never look at entry points; there, run the same command line
through this module, which registers the name and then hands over to lm_eval's CLI::

    python -m llmkit.eval.harness --model llmkit --model_args pretrained=smollm2-135m-instruct \\
        --tasks hellaswag --batch_size 8

or from Python, ``import llmkit.eval.harness`` and then
``lm_eval.simple_evaluate(model="llmkit", model_args="pretrained=...", tasks=[...])``.
``pretrained`` is anything :func:`llmkit.generate.load_model_and_tokenizer`
loads: a model name, an HF directory or a ``.gguf`` file.

The three request types map onto llmkit's own code, so the harness and
``llmkit eval`` agree: ``loglikelihood`` is :func:`llmkit.eval.scoring.loglikelihoods`
(lm-eval's context/continuation encoding); ``loglikelihood_rolling`` scores
lm_eval's own disjoint rolling windows (prefix token, full context per window)
with :func:`~llmkit.eval.scoring.score_spans`; ``generate_until`` is
:func:`llmkit.generate.generate` with the request's stop strings, greedy
unless it asks to sample. Needs ``pip install lm-eval``.
"""
from __future__ import annotations

import json
import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from llmkit.eval.scoring import context_length, loglikelihoods, score_spans

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@register_model("llmkit")
class LlmkitLM(LM):
    """lm_eval's ``LM`` interface over an llmkit model and tokenizer.

    Args:
        pretrained: a model name, HF directory or ``.gguf`` file.
        dtype: ``float32`` / ``bfloat16`` / ``float16`` (and their short names).
        device: where to run; default (and for ``cuda`` on a machine without it) CUDA when available, else CPU.
        batch_size: sequences per forward pass (lm_eval's ``--batch_size``; ``auto`` means 8, or
            ``max_batch_size`` when given).
        max_batch_size: lm_eval's ``--max_batch_size``, the batch size ``auto`` stands for.
        max_gen_toks: default token budget of ``generate_until`` requests.
    """

    def __init__(self, pretrained: str = "smollm2-135m-instruct", dtype: str = "float32", device: str | None = None,
                 batch_size: int | str = 8, max_batch_size: int | None = None, max_gen_toks: int = 256):
        super().__init__()
        from llmkit.generate import load_model_and_tokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm_eval's CLI asks for cuda by default
        self.model, self.tokenizer = load_model_and_tokenizer(str(pretrained), dtype=DTYPES[dtype], device=device)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else int(max_batch_size or 8)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        scores = loglikelihoods(self.model, self.tokenizer, [r.args for r in requests], self.batch_size)
        return [(s.logprob, s.greedy) for s in scores]

    def loglikelihood_rolling(self, requests) -> list[float]:
        ctx = context_length(self.model)
        rows, ks, owner = [], [], []
        for i, req in enumerate(requests):
            ids = self.tokenizer.encode(req.args[0], add_special_tokens=False)
            for window in get_rolling_token_windows(ids, self.prefix_token_id, ctx, context_len=1):
                context, targets = make_disjoint_window(window)
                rows.append(context + targets)
                ks.append(len(targets))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, score_spans(self.model, rows, ks, self.batch_size)):
            totals[i] += s.logprob
        return totals

    def generate_until(self, requests) -> list[str]:
        from llmkit.generate import SamplingParams, generate

        ctx = context_length(self.model)
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same settings generate as one batch
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sample = kwargs.pop("do_sample", False) or float(kwargs.get("temperature", 0.0)) > 0
            sampling = SamplingParams(temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
                                      top_p=float(kwargs.get("top_p", 1.0)), top_k=int(kwargs.get("top_k", 0) or 0))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                prompts = [self._fit(requests[i].args[0], ctx - max_new) for i in batch]
                texts = generate(self.model, self.tokenizer, prompts, sampling=sampling, max_new_tokens=max_new,
                                 stop=until or None).texts
                for i, text in zip(batch, texts):
                    for s in until:  # the stop string itself is not part of the answer
                        text = text.split(s)[0]
                    out[i] = text
        return out

    def _fit(self, prompt: str, budget: int) -> str:
        """The prompt, cut from the left to ``budget`` tokens (lm-eval keeps the end of a long context)."""
        ids = self.tokenizer.encode(prompt)
        return prompt if len(ids) <= budget else self.tokenizer.decode(ids[-max(budget, 1):])


def main(argv: list[str] | None = None) -> None:
    """``lm_eval``'s command line, with ``--model llmkit`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
