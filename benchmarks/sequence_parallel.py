"""Peak activation memory per rank of one `Trainer` step with sequence parallelism, on 1, 2 and 4 gloo ranks.

Each world size is a ``torch.multiprocessing.spawn`` of CPU processes. Every
rank builds the same small model and one batch of ``--seq_len`` tokens, and
measures with :class:`llmkit.parallel.PeakMemory` the peak bytes of tensors
created and alive during ``Trainer.train_step`` (forward, backward, the
gradient reduction and the AdamW step; the weights themselves existed before
and are not counted, the gradients and optimizer moments are, and those are
the same on every world size). One rank is plain training (no sequence
parallelism), with the fused SDPA kernel and with explicit (T x T) scores
(``attn_impl="eager"``); 2 and 4 ranks run ``sequence_parallel`` ring (whose
reference blocks are explicit float32 scores, so compare it with eager) and
ulysses (whose local attention is SDPA). Prints a markdown table of rank 0's
peak in MiB.

    nice -n 10 .venv/bin/python benchmarks/sequence_parallel.py [--seq_len 4096] [--worlds 1 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile

import torch
import torch.multiprocessing as mp

from llmkit import CausalLM, ModelConfig
from llmkit.parallel import PeakMemory
from llmkit.train import Trainer, TrainConfig
from llmkit.train.data import Data

MODEL = dict(vocab_size=512, dim=64, n_layers=2, n_heads=8, n_kv_heads=8, ffn_dim=128)


class OneBatch:
    """The same random batch forever, on every rank."""

    def __init__(self, seq_len: int):
        g = torch.Generator().manual_seed(0)
        self.batch = torch.randint(0, MODEL["vocab_size"], (2, 1, seq_len + 1), generator=g)

    def __next__(self):
        return self.batch[0, :, :-1], self.batch[0, :, 1:]

    def state_dict(self):
        return {}


def measure(rank: int, world: int, port: int, method: str, impl: str, seq_len: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    name = f"{out}/{method}{world}{impl}"
    cfg = TrainConfig(out_dir=name, sequence_parallel=method, batch_size=1, device="cpu",
                      plot=False, max_steps=1, warmup_steps=0)
    torch.manual_seed(0)
    trainer = Trainer(cfg, model=CausalLM(ModelConfig(**MODEL, max_seq_len=seq_len, attn_impl=impl)), data=Data(OneBatch(seq_len)))
    with PeakMemory() as mem:
        loss = trainer.train_step()["loss"]
    if rank == 0:
        with open(f"{name}.json", "w") as f:
            json.dump({"peak": mem.peak, "loss": loss}, f)
    trainer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq_len", type=int, default=4096)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for world in args.worlds:
            runs = [("none", "sdpa"), ("none", "eager")] if world == 1 else [("ring", "sdpa"), ("ulysses", "sdpa")]
            for method, impl in runs:
                mp.spawn(measure, args=(world, free_port(), method, impl, args.seq_len, out), nprocs=world,
                         join=True)
                with open(f"{out}/{method}{world}{impl}.json") as f:
                    r = json.load(f)
                label = f"{method} ({impl})" if world == 1 else method
                rows.append((world, label, r["peak"] / 2**20, r["loss"]))
                print(f"{world} rank(s), {label}: {rows[-1][2]:.1f} MiB, loss {r['loss']:.6f}", flush=True)
    print(f"\nseq_len {args.seq_len}, model {MODEL}\n")
    print("| ranks | sequence_parallel | peak MiB per rank (train_step) | loss |\n|---|---|---|---|")
    for world, method, mib, loss in rows:
        print(f"| {world} | {method} | {mib:.1f} | {loss:.6f} |")


if __name__ == "__main__":
    main()
