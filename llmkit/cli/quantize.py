"""``llmkit quantize --model M --scheme gptq --bits 4 --group-size 64 --calib shakespeare --out DIR``.

Loads the model, measures its size and held-out perplexity, quantises it
(:func:`llmkit.quant.quantize`), measures again and saves the quantised model
with its tokenizer, loadable by every verb (``llmkit generate --model DIR``).
Calibration windows come from the training split of ``--calib`` and the
perplexity from its held-out split (:func:`llmkit.eval.perplexity.resolve_text`),
so the number is not measured on text the calibration saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# each scheme's code width when it has no bits option
SCHEME_BITS = {"int8": 8, "llm_int8": 8, "smoothquant": 8, "fp8": 8, "int4": 4, "awq": 4, "nf4": 4}


@dataclass
class Args:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name, HF directory or .gguf file"})
    scheme: str = field(default="int8", metadata={
        "help": "int8, int4, nf4, llm_int8, smoothquant, gptq, awq or fp8 (see docs/quantization.md)"})
    out: str = field(default="", metadata={"help": "directory to save the quantised model and tokenizer to"})
    bits: int | None = field(default=None, metadata={"help": "code width (gptq: 2-4; the others have one width)"})
    group_size: int | None = field(default=None, metadata={
        "help": "input columns per scale for int4/gptq/awq (must divide every linear's in_features)"})
    calib: str = field(default="shakespeare", metadata={
        "help": "calibration text (gptq/awq/smoothquant): a corpus name or a text file/folder"})
    calib_samples: int = field(default=32, metadata={"help": "calibration windows"})
    calib_len: int = field(default=256, metadata={"help": "tokens per calibration window"})
    eval_tokens: int = field(default=4096, metadata={"help": "held-out tokens scored for perplexity (0 = skip)"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "float dtype before quantising"})
    seed: int = field(default=0, metadata={"help": "seed of the calibration windows"})


HELP = "Quantise a model (int8, int4, NF4, LLM.int8, SmoothQuant, GPTQ, AWQ, fp8); prints size and perplexity"


def scheme_options(args: Args) -> dict:
    """The scheme options the flags give; UsageError naming the flag for one the scheme lacks."""
    from llmkit.cli.args import UsageError
    from llmkit.quant import QUANT_SCHEMES

    if args.scheme not in QUANT_SCHEMES:
        raise UsageError(f"--scheme: {args.scheme!r} is not one of {', '.join(QUANT_SCHEMES)}")
    defaults = QUANT_SCHEMES[args.scheme].defaults
    options = {}
    if args.bits is not None:
        if "bits" in defaults:
            options["bits"] = args.bits
        elif args.bits != SCHEME_BITS[args.scheme]:
            raise UsageError(f"--bits {args.bits}: {args.scheme} is {SCHEME_BITS[args.scheme]}-bit only "
                             "(gptq takes 2-4)")
    if args.group_size is not None:
        if "group_size" not in defaults:
            raise UsageError(f"--group-size: {args.scheme} has no groups (int4, gptq and awq do)")
        options["group_size"] = args.group_size
    return options


def weight_bytes(model) -> int:
    """Bytes of the model's tensors as saved (a tied head counted once)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def run(args: Args) -> int:
    import torch

    from llmkit.cli.args import UsageError
    from llmkit.eval.perplexity import perplexity, resolve_text
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.quant import QUANT_SCHEMES, quantize
    from llmkit.quant.calibrate import calibration_ids

    if not args.out:
        raise UsageError("give --out DIR to save the quantised model to")
    options = scheme_options(args)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype={"fp32": torch.float32,
                                                                   "bf16": torch.bfloat16}[args.dtype])
    held_out = resolve_text(args.calib)[0] if args.eval_tokens else None

    def report(label: str) -> None:
        line = f"{label:<8} {weight_bytes(model) / 2**20:8.1f} MiB"
        if held_out is not None:
            with torch.no_grad():
                ppl = perplexity(model, tokenizer, held_out, max_tokens=args.eval_tokens).perplexity
            line += f"   perplexity {ppl:.3f} ({args.eval_tokens} held-out tokens of {args.calib})"
        print(line, flush=True)

    report("before")
    calibration = None
    if QUANT_SCHEMES[args.scheme].calibrated:
        calibration = calibration_ids(tokenizer, args.calib, args.calib_samples, args.calib_len, args.seed)
    try:
        quantize(model, args.scheme, calibration, **options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    report(args.scheme)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"saved to {args.out} ({size / 2**20:.1f} MiB on disk)")
    return 0
