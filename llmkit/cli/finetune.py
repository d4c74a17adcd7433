"""``llmkit finetune --method lora|qlora|dora|full|prefix|prompt --model M --data FILE.jsonl|austen-chat``.

The flags are :class:`~llmkit.finetune.FinetuneConfig`'s fields, and
``--config RECIPE.yaml`` supplies the same fields (flags override it); see
``recipes/finetune-*.yaml``. Everything else is the library's
:func:`~llmkit.finetune.finetune`; exit code 130 means interrupted, with a
checkpoint to ``--resume`` from.
"""
from __future__ import annotations

from llmkit.finetune import FinetuneConfig as Args

__all__ = ["Args", "run"]


def run(args: Args) -> int:
    from llmkit.finetune import finetune

    return 0 if finetune(args) is not None else 130
