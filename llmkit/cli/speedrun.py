"""``llmkit speedrun``: the whole pipeline (data, tokenizer, pretraining, SFT, report) in one command."""
from __future__ import annotations

from llmkit.speedrun import SpeedrunConfig as Args


def run(args: Args) -> int:
    from llmkit.speedrun import speedrun

    speedrun(args)
    return 0


__all__ = ["Args", "run"]
