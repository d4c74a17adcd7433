"""``llmkit align METHOD --model M --data D [--peft lora|none] [...]``: reward, dpo ... ppo, grpo, distill.

``llmkit align ppo --reward-model RM_DIR`` trains against an ``llmkit align reward`` run (without it: the
arithmetic verifier).

The flags are :class:`~llmkit.align.config.AlignConfig`'s fields (``--config
RECIPE.yaml`` supplies the same fields; flags override it), METHOD is its
``method``. Everything else is the library's :func:`~llmkit.align.align`;
exit code 130 means interrupted, with a checkpoint to ``--resume`` from.
"""
from __future__ import annotations

import typing

from llmkit.align.config import AlignConfig as Args
from llmkit.align.config import Method

__all__ = ["Args", "POSITIONALS", "run"]

POSITIONALS = {"method": dict(nargs="?", choices=typing.get_args(Method), metavar="METHOD",
                              help=f"one of {', '.join(typing.get_args(Method))}")}


def run(args: Args) -> int:
    from llmkit.align.run import align

    return 0 if align(args) is not None else 130
