"""``llmkit summarize FILE``: summarise a text file of any length with map-reduce, refine or map-rerank.

The model is an llmkit model (name, HF directory or .gguf, as for ``llmkit
generate``) or, with ``--endpoint URL``, any OpenAI-compatible server. The
document is split by tokens at sentence boundaries; see
:mod:`llmkit.longdoc.summarize` for the methods.
"""
from __future__ import annotations

import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.longdoc.summarize import Method

POSITIONALS = {"file": dict(nargs="?", help="the text file to summarise")}


@dataclass
class Args:
    file: str = field(default="", metadata={"help": "the text file to summarise"})
    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "llmkit model: name, HF directory or .gguf file (with --endpoint: the server's model name)"})
    method: Method = field(default="map_reduce", metadata={"help": "map_reduce, refine or map_rerank"})
    chunk_tokens: int | None = field(default=None, metadata={
        "help": "tokens of document per call (default: what the context leaves after prompt and answer)"})
    max_new_tokens: int = field(default=200, metadata={"help": "length limit of each call's output"})
    question: str = field(default="What is this text about?", metadata={"help": "map_rerank's question"})
    endpoint: str | None = field(default=None, metadata={
        "help": "base URL of an OpenAI-compatible API (e.g. http://localhost:8000/v1); key from $OPENAI_API_KEY"})
    context: int = field(default=4096, metadata={"help": "with --endpoint: the model's context in tokens"})
    dtype: typing.Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "weight dtype (llmkit model)"})
    json: bool = field(default=False, metadata={"help": "print the result (summary, chunks, steps) as JSON"})


def run(args: Args) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.longdoc import LocalLLM, OpenAIChat, summarize

    if not args.file:
        raise UsageError("give a file: llmkit summarize FILE")
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise UsageError(f"{args.file} is empty")
    if args.endpoint:
        llm = OpenAIChat(args.endpoint, args.model, api_key=os.environ.get("OPENAI_API_KEY"), context=args.context)
    else:
        import torch

        from llmkit.generate import load_model_and_tokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        llm = LocalLLM(*load_model_and_tokenizer(args.model, dtype=dtype, device=device))
    result = summarize(text, llm, method=args.method, chunk_tokens=args.chunk_tokens,
                       max_new_tokens=args.max_new_tokens, question=args.question)
    print(json.dumps(asdict(result), indent=2) if args.json else result.text)
    return 0
