"""QAT vs post-training RTN int4 on a speedrun model: held-out perplexity of the real int4 models.

Both arms continue the speedrun's pretrained nano model (``quant.speedrun_model()``) with the
same Trainer run (data order, steps, schedule); only ``TrainConfig.qat`` differs:

- float: ``--steps`` of float training, then post-training round-to-nearest int4
  (``quantize(model, "int4", group_size=32)``);
- QAT: the same steps with ``qat="int4"`` (fake-quantised linears, straight-through gradient);
  the Trainer's export is the converted, real int4 model.

Rows: the starting checkpoint and its RTN int4, the float continuation and its RTN int4, and the
QAT int4 model. The fair comparison is QAT int4 against the float continuation's RTN int4 (the
same training budget). Perplexity: held-out Shakespeare, llama-perplexity's protocol, the
speedrun row's chunks of ``benchmarks/quant.py``. Writes the table into docs/quantization.md
(between ``qat-table`` markers) unless ``--quick``.

    .venv/bin/python benchmarks/qat.py [--steps 100] [--quick] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import llama_cpp_tools as lc
from quant import ROOT, SPEEDRUN, SUBJECTS, held_out_file, speedrun_model, write_between_markers

GROUP = SUBJECTS["speedrun"].group_size


def train(start: Path, out: Path, steps: int, qat: str) -> Path:
    """Continue ``start`` for ``steps`` steps (``qat`` = "" or "int4"); returns the exported model directory."""
    from llmkit.train import Trainer, TrainConfig

    cfg = TrainConfig(task="pretrain", model=str(start), tokenizer=str(start), data=str(SPEEDRUN / "data"),
                      seq_len=256, batch_size=16, max_steps=steps, lr=1e-3, min_lr=1e-4, warmup_steps=5,
                      schedule="cosine", eval_every=0, eval_batches=1, save_every=0, keep_last=1, seed=0,
                      device="cpu", out_dir=str(out), qat=qat, qat_group_size=GROUP)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return out / "model"


def perplexity(path: Path, text_file: Path, chunks: int, rtn: bool = False) -> float:
    """Held-out perplexity of the model at ``path`` (``rtn``: after round-to-nearest int4)."""
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.quant import quantize

    model, tokenizer = load_model_and_tokenizer(path)
    if rtn:
        quantize(model, "int4", group_size=GROUP)
    bos = tokenizer.bos_id if lc.adds_bos(tokenizer) else None
    subject = SUBJECTS["speedrun"]
    return lc.chunked_perplexity(model, lc.eval_ids(tokenizer, text_file.read_text()), subject.n_ctx, chunks, bos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps of each arm (16 x 256 tokens each)")
    ap.add_argument("--quick", action="store_true", help="10 steps, a quarter of the chunks, no docs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 10 if args.quick else args.steps
    chunks = SUBJECTS["speedrun"].chunks // (4 if args.quick else 1)
    start = speedrun_model()
    from llmkit.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = held_out_file(Tokenizer.from_pretrained(start), SUBJECTS["speedrun"], chunks, tmp / "held_out.txt")
        float_model = train(start, tmp / "float", steps, "")
        qat_model = train(start, tmp / "qat", steps, "int4")
        rows = [("speedrun checkpoint", "fp32", perplexity(start, text, chunks)),
                ("speedrun checkpoint", "RTN int4", perplexity(start, text, chunks, rtn=True)),
                (f"+ {steps} float steps", "fp32", perplexity(float_model, text, chunks)),
                (f"+ {steps} float steps", "RTN int4", perplexity(float_model, text, chunks, rtn=True)),
                (f"+ {steps} QAT int4 steps", "int4 (converted)", perplexity(qat_model, text, chunks))]
    lines = ["| model | weights | held-out perplexity |", "|---|---|--:|"]
    lines += [f"| {model} | {weights} | {ppl:.3f} |" for model, weights, ppl in rows]
    rtn, qat = rows[3][2], rows[4][2]
    text = ("\n".join(lines) + f"\n\nint4 in groups of {GROUP}; {steps} steps of 16 x 256 tokens per arm, lr 1e-3 "
            f"cosine; perplexity on {chunks} x {SUBJECTS['speedrun'].n_ctx} held-out tokens. QAT int4 vs RTN int4 "
            f"after the same training: {qat:.3f} vs {rtn:.3f} ({qat / rtn - 1:+.2%}).\n")
    print("\n" + text)
    if not args.quick:
        write_between_markers(ROOT / "docs" / "quantization.md", text, "qat-table")


if __name__ == "__main__":
    main()
