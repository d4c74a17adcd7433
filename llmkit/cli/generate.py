"""``llmkit generate``: complete a prompt, streaming the text to the terminal as it is generated.

The flags shared with ``llmkit chat`` (model, dtype, sampling) live in
:class:`GenerationArgs`; both verbs load through :func:`load`. The sampling
flags are :class:`~llmkit.generate.SamplingParams`' own fields (names, types,
help), each optional so that a verb can tell "not given": the temperature
defaults to 0.7 for sampling, and to 0 (greedy) with ``--num_beams > 1``,
since beam search does not sample; the others default to SamplingParams'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit.generate.sampling import SamplingParams
from llmkit.overrides import given, optional_fields

DEFAULT_TEMPERATURE = 0.7


def _flag_help(f) -> str:
    if f.name == "temperature":
        return f"{f.metadata['help']} (default {DEFAULT_TEMPERATURE}; 0 with --num_beams > 1)"
    return f"{f.metadata['help']} (default {f.default})"


# the token-choice fields; the per-request ones are this verb's --max_new_tokens, --stop and --seed
SamplingFlags = optional_fields(SamplingParams, "SamplingFlags",
                                "SamplingParams fields given on the command line; None = the verb's default.",
                                _flag_help, keep=lambda f: not f.metadata.get("request"))
SamplingFlags.__module__ = __name__


QUANT_HELP = ("quantise on load with a scheme that needs no calibration: int8, int4, nf4, llm_int8, fp8; "
              "options after a colon, e.g. int8:int8_activations=true or int4:group_size=32; or gguf: keep a "
              ".gguf file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K blocks as they are (about the file's size in memory)")


@dataclass
class GenerationArgs:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name, HF directory or .gguf file"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "weight dtype"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the decode step (slow first call)"})
    quant: str | None = field(default=None, metadata={"help": QUANT_HELP})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter directory to apply"})
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = field(default="auto", metadata={
        "help": "KV-cache storage: auto (the weight dtype), or int8/fp8, a scale per token and head (half of bf16)"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens to generate at most"})
    sampling: SamplingFlags = field(default_factory=SamplingFlags, metadata={
        "flatten": True, "help": "SamplingParams' fields as flags (--temperature, --top_p, ...)"})
    stop: list[str] = field(default_factory=list, metadata={"help": "comma-separated stop strings"})
    seed: int | None = field(default=None, metadata={"help": "random seed for reproducible sampling"})

    def default_temperature(self) -> float:
        return DEFAULT_TEMPERATURE

    def sampling_params(self) -> SamplingParams:
        """The :class:`SamplingParams` these flags give (unvalidated)."""
        return SamplingParams(**{"temperature": self.default_temperature(), **given(self.sampling)})

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`llmkit.generate.generate` these flags set."""
        return dict(sampling=self.sampling_params(), max_new_tokens=self.max_new_tokens, stop=self.stop or None,
                    seed=self.seed, compile=self.compile, kv_cache_dtype=self.kv_cache_dtype)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        try:
            self.sampling_params().validate()
        except ValueError as e:  # its messages start with the field's name, which is the flag's
            raise ValueError(f"--{e}") from None


@dataclass
class Args(GenerationArgs):
    prompt: str = field(default="", metadata={"help": "the prompt (a user message when the model has a chat template)"})
    raw: bool = field(default=False, metadata={"help": "complete the prompt as plain text, without the chat template"})
    num_beams: int = field(default=1, metadata={"help": "beam search width (1 = sampling / greedy)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam search: score / length ** this"})

    def default_temperature(self) -> float:
        return 0.0 if self.num_beams > 1 else DEFAULT_TEMPERATURE

    def validate(self) -> None:
        super().validate()
        if self.num_beams < 1:
            raise ValueError(f"--num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.sampling_params().temperature > 0:
            raise ValueError("--num_beams > 1 does not sample: drop --temperature or set it to 0")


def load(args: GenerationArgs):
    """(model, tokenizer) for the flags: name/path, dtype, quantisation, adapter; on CUDA when available."""
    import torch

    from llmkit.cli.args import UsageError

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model, tokenizer = load_quantized(args.model, dtype, device, args.quant)
    if args.adapter:
        from llmkit.peft import load_adapter

        if not Path(args.adapter).is_dir():
            raise UsageError(f"--adapter: no such directory {args.adapter}")
        model = load_adapter(model, args.adapter).eval()
    return model, tokenizer


def load_quantized(name: str, dtype, device, quant: str | None):
    """(model, tokenizer) loaded and quantised as ``--quant`` says (None: as stored); UsageError for a bad value."""
    from llmkit.cli.args import UsageError
    from llmkit.generate import load_model_and_tokenizer

    keep = quant == "gguf"
    scheme = quant_scheme(quant) if quant and not keep else None
    model, tokenizer = load_model_and_tokenizer(name, dtype=dtype, device=device, keep_quantized=keep)
    if keep:
        from llmkit.quant.gguf_linear import GGUFLinear

        if not any(isinstance(m, GGUFLinear) for m in model.modules()):
            raise UsageError(f"--quant gguf keeps the quantised blocks of a .gguf file; {name} has none")
    elif scheme:
        from llmkit.quant import quantize

        name, options = scheme
        try:
            quantize(model, name, **options)
        except ValueError as e:  # a layer shape the scheme cannot take
            raise UsageError(f"--quant: {e}") from None
    return model, tokenizer


def quant_scheme(spec: str) -> tuple[str, dict]:
    """``--quant NAME[:OPT=VAL,...]`` as (scheme, options); UsageError for an unknown, malformed or calibrated one."""
    from llmkit.cli.args import UsageError
    from llmkit.quant.schemes import QUANT_SCHEMES, parse_scheme

    try:
        name, options = parse_scheme(spec)
    except ValueError as e:
        raise UsageError(f"--quant: {e}") from None
    if QUANT_SCHEMES[name].calibrated:
        raise UsageError(f"--quant: scheme {name!r} needs calibration data; quantise the model with "
                         "`llmkit quantize` and load the result")
    return name, options


def run(args: Args) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.generate import generate

    if not args.prompt:
        raise UsageError("give a prompt: llmkit generate --prompt TEXT")
    model, tokenizer = load(args)
    kwargs = args.generate_kwargs()
    # instruct models answer a user turn; a bare question is often "completed" with EOS
    prompt = args.prompt if args.raw or not tokenizer.chat_template else [{"role": "user", "content": args.prompt}]
    if args.num_beams > 1:
        out = generate(model, tokenizer, prompt, num_beams=args.num_beams, length_penalty=args.length_penalty,
                       **kwargs)
        print(out.text)
        return 0
    for delta in generate(model, tokenizer, prompt, stream=True, **kwargs):
        print(delta, end="", flush=True)
    print()
    return 0
