"""``llmkit serve``: serve a model over the OpenAI API (and a chat page at ``/``) with the inference engine.

The server listens at once and loads the model in the background: ``/health``
answers 503 until the model is ready, then 200 (what a Kubernetes readiness
probe wants). Engine flags are :class:`~llmkit.engine.LLM`'s options.

``--lora NAME=DIR`` (repeatable, or a list in the YAML config) serves peft-format
LoRA adapters from the one base model; a request picks one with ``"model": NAME``.
Adapter files are read before the server starts (a bad one is a usage error);
whether they fit the model is checked when it loads (``/health`` reports it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmkit.cli.generate import QUANT_HELP

CPU_COMPILE_MAX_BATCH = 8  # measured: see docs/serving.md, "Benchmark"
HELP = "Serve a model over the OpenAI API (completions, chat, streaming) with a web chat page"


@dataclass
class Args:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name, HF directory or .gguf file"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "the name clients pass as 'model' (default: the model's name or file stem)"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' on /v1/* (default: open)"})
    dtype: Literal["fp32", "bf16", "fp16"] | None = field(default=None, metadata={
        "help": "weight dtype (default: the checkpoint's)"})
    quant: str | None = field(default=None, metadata={"help": QUANT_HELP})
    max_num_seqs: int = field(default=64, metadata={"help": "sequences decoded together at most"})
    max_queue: int = field(default=256, metadata={
        "help": "requests that may wait beyond the running batch; more get 429 with Retry-After"})
    max_num_batched_tokens: int = field(default=2048, metadata={"help": "tokens per engine step at most"})
    kv_cache_memory: str | None = field(default=None, metadata={
        "help": "KV pool size, e.g. 2GiB (default: a share of free memory)"})
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = field(default="auto", metadata={
        "help": "KV pool storage: auto (the weight dtype), or int8/fp8 (about twice the blocks of bf16)"})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "reuse KV blocks of common prefixes"})
    compile: bool = field(default=True, metadata={
        "help": "compile the decode steps while loading (a minute or two on CPU; /health says 503 meanwhile)"})
    compile_max_batch: int | None = field(default=None, metadata={
        "help": "compile decode steps of at most this many sequences; larger ones run eager "
                f"(default: all on CUDA, {CPU_COMPILE_MAX_BATCH} on CPU, where larger batches do not gain from it)"})
    lora: list[str] = field(default_factory=list, metadata={
        "help": "NAME=DIR: serve the LoRA adapter in DIR as model NAME (repeatable)"})
    log_level: Literal["debug", "info", "warning", "error"] = field(default="info", metadata={
        "help": "uvicorn's log level"})

    def lora_adapters(self) -> dict[str, str]:
        """``--lora`` as {name: directory}; UsageError for a malformed or repeated entry."""
        from llmkit.cli.args import UsageError

        out = {}
        for item in self.lora:
            name, sep, directory = item.partition("=")
            if not sep or not name or not directory:
                raise UsageError(f"--lora: expected NAME=DIR, got {item!r}")
            if name in out or name in (self.served_name(), self.model):
                raise UsageError(f"--lora: the name {name!r} is taken (adapters and the base need distinct names)")
            out[name] = directory
        return out

    def served_name(self) -> str:
        return self.served_model_name or (Path(self.model).stem if Path(self.model).suffix == ".gguf"
                                          else Path(self.model).name)


def run(args: Args) -> int:
    import torch
    import uvicorn

    from llmkit.cli.args import UsageError
    from llmkit.cli.generate import load_quantized, quant_scheme
    from llmkit.engine import LLM, AsyncLLMEngine
    from llmkit.engine.llm import DTYPES
    from llmkit.engine.model_runner import BATCH_BUCKETS
    from llmkit.io.errors import CheckpointError
    from llmkit.peft.multi_lora import read_lora
    from llmkit.serve import ServeConfig, build_app

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if args.max_num_seqs < 1 or args.max_queue < 0 or (args.compile_max_batch or 1) < 1:
        raise UsageError("--max_num_seqs and --compile_max_batch must be >= 1, --max_queue >= 0")
    loras = args.lora_adapters()
    for name, directory in loras.items():
        try:
            read_lora(directory)
        except (CheckpointError, ValueError) as e:
            raise UsageError(f"--lora {name}: {e}") from None

    if args.quant and args.quant != "gguf":
        quant_scheme(args.quant)  # a bad value fails now, not in the background load

    def load() -> AsyncLLMEngine:
        cuda = torch.cuda.is_available()  # LLM's device when none is given
        model, tokenizer = args.model, None
        if args.quant:
            model, tokenizer = load_quantized(args.model, DTYPES.get(args.dtype), "cuda" if cuda else "cpu",
                                              args.quant)
        llm = LLM(model, tokenizer=tokenizer, dtype=None if args.quant else args.dtype,
                  max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_memory=args.kv_cache_memory,
                  kv_cache_dtype=args.kv_cache_dtype,
                  enable_prefix_caching=args.enable_prefix_caching, lora_adapters=loras, compile=args.compile,
                  compile_max_batch=min(args.max_num_seqs, args.compile_max_batch
                                        or (BATCH_BUCKETS[-1] if cuda else CPU_COMPILE_MAX_BATCH)))
        llm.engine.warmup()
        return AsyncLLMEngine(llm.engine)

    config = ServeConfig(args.served_name(), api_key=args.api_key, max_queue=args.max_queue,
                         aliases=(args.model,))
    uvicorn.run(build_app(config, load), host=args.host, port=args.port, log_level=args.log_level)
    return 0
