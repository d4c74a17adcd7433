"""Training throughput and MFU: llmkit's Trainer vs a plain transformers LlamaForCausalLM loop, same run.

Both sides train the same shapes (the HF config comes from ``llmkit.io.hf_config.config_to_hf``)
on the same random batches with the same step: AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1),
gradient clipping at 1.0, token-mean cross-entropy on fp32 logits, fp32 master weights, optionally
bf16 autocast. Ours is ``Trainer.train_step`` (LR schedule, loss normalisation and metrics
included); theirs is the textbook loop. Step times are the median of ``--steps`` timed steps after
``--warmup`` untimed ones, ours and theirs interleaved so that load from other processes hits both.

MFU (model FLOPs utilisation) = model FLOPs per second / peak FLOPs per second, with the FLOPs
per token of :func:`llmkit.estimate.flops.train_flops_per_token` (the speedrun's MFU too):
``6 * N_matmul`` plus the causal attention scores and weighted sum (Kaplan et al. 2020; PaLM,
Chowdhery et al. 2022, appendix B; its docstring has the details). The peak is *measured*: the best of several large square matmuls in the same
dtype, on the same device and thread count, in the same run. On a CPU that is the attainable BLAS
peak rather than a datasheet figure, so MFU reads as "share of what this machine's matmul can do".

On a CPU shared with other work, ``--threads 1`` gives far steadier numbers: OpenMP threads that
spin waiting for a descheduled sibling can slow small kernels several-fold.

    .venv/bin/python benchmarks/train.py [--steps 6] [--warmup 2] [--batch 8] [--seq 256] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig
from llmkit.estimate.flops import train_flops_per_token
from llmkit.estimate.params import count_params
from llmkit.presets import get_preset

MODELS = {
    "tiny": get_preset("tiny"),
    # ~15.7M parameters: 8 x 384 with GQA 6/2, vocab 8192, tied embeddings
    "15m": ModelConfig(vocab_size=8192, dim=384, n_layers=8, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                       max_seq_len=1024, tie_word_embeddings=True),
}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Batches:
    """The same endless random batches for both sides."""

    def __init__(self, vocab: int, batch: int, seq: int):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randint(0, vocab, (batch, seq), generator=g),) * 2 for _ in range(4)]
        self.step = 0

    def __next__(self):
        self.step += 1
        return self.data[self.step % len(self.data)]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def ours(cfg: ModelConfig, dtype: str, batch: int, seq: int, device: torch.device, out_dir: str):
    from llmkit.train import Data, TrainConfig, Trainer
    from llmkit.train.config import ModelOverrides

    tc = TrainConfig(model="tiny", model_overrides=ModelOverrides(**cfg.to_dict()), data="unused", out_dir=out_dir,
                     seq_len=seq, batch_size=batch, max_steps=10**6, warmup_steps=0, schedule="constant", lr=1e-3,
                     device=str(device), dtype=dtype, plot=False)
    trainer = Trainer(tc, data=Data(Batches(cfg.vocab_size, batch, seq)))
    return trainer.train_step


def theirs(cfg: ModelConfig, dtype: str, batch: int, seq: int, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmkit.io.hf_config import config_to_hf

    hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("llmkit_config", "model_type", "architectures")}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa")).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda" or None)
    data = Batches(cfg.vocab_size, batch, seq)

    def step():
        x, y = (t.to(device) for t in next(data))
        with torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed(step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,15m")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes.split(",")
    peaks = {d: matmul_peak(device, {"fp32": torch.float32, "bf16": torch.bfloat16}[d]) for d in dtypes}
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch} x seq {args.seq}, "
          f"median of {args.steps} steps after {args.warmup}")
    print("measured matmul peak: " + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()))
    rows = []
    for name in args.models.split(","):
        cfg = MODELS[name]
        params, fpt = count_params(cfg).total, train_flops_per_token(cfg, args.seq)
        for dtype in dtypes:
            with tempfile.TemporaryDirectory() as tmp:
                steps = {"llmkit": ours(cfg, dtype, args.batch, args.seq, device, tmp),
                         "transformers": theirs(cfg, dtype, args.batch, args.seq, device)}
                times: dict[str, list[float]] = {k: [] for k in steps}
                for i in range(args.warmup + args.steps):
                    for k, step in steps.items():
                        t = timed(step, device)
                        if i >= args.warmup:
                            times[k].append(t)
            tps = {k: args.batch * args.seq / statistics.median(v) for k, v in times.items()}
            mfu = {k: v * fpt / peaks[dtype] for k, v in tps.items()}
            rows.append((f"{name} ({params / 1e6:.1f}M)", dtype, tps["llmkit"], tps["transformers"], mfu["llmkit"], mfu["transformers"], fpt))
    header = ("model", "dtype", "MFLOP/token", "llmkit tok/s", "HF tok/s", "llmkit/HF", "llmkit MFU", "HF MFU")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, dtype, ours_tps, hf_tps, ours_mfu, hf_mfu, fpt in rows:
        print(f"| {name} | {dtype} | {fpt / 1e6:.1f} | {ours_tps:,.0f} | {hf_tps:,.0f} | {ours_tps / hf_tps:.2f} | "
              f"{ours_mfu:.1%} | {hf_mfu:.1%} |")


if __name__ == "__main__":
    main()
