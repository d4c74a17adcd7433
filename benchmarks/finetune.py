"""Fine-tuning memory and speed: full, LoRA, QLoRA and prefix tuning in llmkit, and LoRA in peft, same run.

For each preset (random init in the published shape: speed and memory do not
depend on the values, and no download is needed) and each method, one fresh
process builds the model, applies the method, and runs AdamW training steps on
random tokens in fp32 on CPU. It reports tokens/s (median step) and memory
three ways:

- counted: the exact bytes of every parameter, buffer, gradient and optimizer
  state tensor after the last step (torch tensors are invisible to tracemalloc);
- RSS delta: peak resident memory of the process during the training steps
  (sampled every 2 ms from /proc/self/statm) minus its RSS before the model was
  built (after one training step of a toy model, so the ~80 MiB of library code
  torch pages in on first use is not counted). This includes activations, autograd temporaries and allocator slack.
  The QLoRA model is built the way a 4-bit loader does it, one linear
  quantised at a time, so no fp32 copy of the whole model ever exists; each
  method gets a fresh process so one method's allocations cannot hide another's,
  and glibc's mmap threshold is pinned at 128 KiB so freed tensors go back to
  the OS instead of lingering in the heap (by default the threshold grows with
  each large free, and RSS then counts dead memory);
- predicted: our formula (below), static part + activations.

Prediction, per method (fp32, N parameters, B x T tokens per step):
- static: 16 bytes per trainable parameter (weight, grad, Adam m and v) and
  4 per frozen one; a 4-bit linear stores 0.5 + 1/64 + 4/(64*256) bytes per
  weight (NF4 + fp8 absmax + fp32 second-level scale).
- activations, 4 bytes x B x T x values-per-token:
  per layer, full 9d + 2k + 4f, LoRA/QLoRA on all linears 7d + 2k + 4f + 7r
  (frozen norm weights keep no normalised copy), prefix 4d + 2k(T+n)/T + 3f
  (frozen linears keep no input; attention keeps the n + T cached keys and
  values, and torch's CPU flash kernel takes the mask, so no T x S
  probabilities); plus 4V for the loss head (logits, fp32 log-softmax, their
  two gradients). d = width, k = K/V width, f = MLP width, r = rank,
  n = prefix length, V = vocabulary.

Machine note: CPU timings on a shared machine vary with what else runs; the
peft row runs in the same invocation so the comparison is like for like. The
default is one torch thread: on a 2-core machine shared with other jobs,
OpenMP threads spinning against each other made steps over 10x slower.

    .venv/bin/python benchmarks/finetune.py [--presets smollm2-135m smollm2-360m] [--seq 256] [--steps 3]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import resource
import statistics
import threading
import time

METHODS = ("full", "lora", "qlora", "prefix", "peft-lora")
MiB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Samples this process's RSS in a thread while the ``with`` block runs; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, _rss(), threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _predict(cfg, method: str, batch: int, seq: int, n_total: int, n_linear: int, n_trainable: int, r: int,
             n_prefix: int) -> tuple[float, float]:
    """(static bytes, activation bytes) by the formula in the module docstring."""
    d, k, f, v = cfg.dim, cfg.kv_heads * cfg.head_size, cfg.ffn_dim, cfg.vocab_size
    frozen = n_total - n_trainable
    if method == "qlora":
        static = 4 * (frozen - n_linear) + (0.5 + 1 / 64 + 4 / (64 * 256)) * n_linear + 16 * n_trainable
    else:
        static = 4 * frozen + 16 * n_trainable
    per_layer = {"full": 9 * d + 2 * k + 4 * f, "prefix": 4 * d + 2 * k * (seq + n_prefix) / seq + 3 * f}
    layer = per_layer.get(method, 7 * d + 2 * k + 4 * f + 7 * r)
    return static, 4.0 * batch * seq * (cfg.n_layers * layer + 4 * v)


def _hf_model(cfg):
    import transformers
    from llmkit.io.hf_config import config_to_hf

    d = {k: v for k, v in config_to_hf(cfg).items() if k not in ("llmkit_config", "model_type", "architectures", "dtype")}
    hf_cfg = transformers.LlamaConfig(**d)
    hf_cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(hf_cfg).float()


def _build_4bit(cfg):
    """A random-init CausalLM whose linears (not the head) are NF4, quantised one at a time as a loader would."""
    import torch
    from torch import nn

    from llmkit import CausalLM
    from llmkit.peft.base import replace_module
    from llmkit.peft.qlora import Linear4bit

    with torch.device("meta"):
        model = CausalLM(cfg)
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear and name != "lm_head":
            dense = nn.Linear(m.in_features, m.out_features, m.bias is not None)
            nn.init.normal_(dense.weight, std=cfg.init_std)
            replace_module(model, name, Linear4bit.from_linear(dense))
    for m in model.modules():  # the rest: embeddings, norms, the head
        if any(t.is_meta for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]):
            m.to_empty(device="cpu", recurse=False)
            with torch.no_grad():
                for p in m.parameters(recurse=False):
                    p.normal_(std=cfg.init_std) if p.dim() > 1 else p.fill_(1.0)
    model.rebuild_buffers("cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def _train_step(forward, opt, ids) -> None:
    import torch.nn.functional as F

    logits = forward(ids[:, :-1])
    F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=False)  # keep the grads allocated, as they are at the peak


def _warm_up() -> None:
    """One LoRA training step of a toy model: pages in the kernels before the baseline is taken."""
    import torch

    from llmkit import CausalLM, ModelConfig
    from llmkit.peft import apply_lora

    toy = apply_lora(CausalLM(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, ffn_dim=64)), "all-linear")
    _train_step(toy, torch.optim.AdamW([p for p in toy.parameters() if p.requires_grad]), torch.randint(0, 64, (1, 9)))


def run_one(preset: str, method: str, batch: int, seq: int, steps: int, r: int, n_prefix: int,
            threads: int) -> dict:
    """Build, adapt and train in this (fresh) process; return the measurements."""
    import torch

    from llmkit import CausalLM
    from llmkit.peft import apply_lora, apply_prefix_tuning, trainable_parameters
    from llmkit.peft.qlora import Linear4bit
    from llmkit.presets import get_preset

    if threads:
        torch.set_num_threads(threads)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, so RSS follows live tensors
    torch.manual_seed(0)
    _warm_up()
    cfg = get_preset(preset)
    rss0 = _rss()
    if method == "peft-lora":
        import peft

        model = _hf_model(cfg)
        model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
        forward = lambda ids: model(input_ids=ids).logits  # noqa: E731
    else:
        model = _build_4bit(cfg) if method == "qlora" else CausalLM(cfg)
        if method in ("lora", "qlora"):
            apply_lora(model, "all-linear", r=r, alpha=2 * r)
        if method == "prefix":
            model = apply_prefix_tuning(model, n_prefix=n_prefix)
        forward = model
    model.train()
    n_trainable, n_total = trainable_parameters(model)
    n_linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, Linear4bit))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    times = []
    with PeakRSS() as rss:
        for _ in range(steps + 1):  # the first step warms up (allocations, optimizer state)
            start = time.perf_counter()
            _train_step(forward, opt, ids)
            times.append(time.perf_counter() - start)

    seen, counted = set(), 0
    tensors = [*model.parameters(), *model.buffers(),
               *[p.grad for p in params if p.grad is not None],
               *[t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            counted += t.numel() * t.element_size()
    static, act = _predict(cfg, method, batch, seq, n_total, n_linear, n_trainable, r, n_prefix)
    return dict(preset=preset, method=method, trainable=n_trainable, total=n_total,
                tok_s=batch * seq / statistics.median(times[1:]), counted=counted, rss=rss.peak - rss0,
                pred_static=static, pred_act=act)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["smollm2-135m", "smollm2-360m"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--prefix", type=int, default=20, help="prefix length for prefix tuning")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    args = ap.parse_args()

    print(f"batch {args.batch} x seq {args.seq}, {args.steps} timed AdamW steps after 1 warm-up, fp32 CPU, "
          f"{args.threads or 'default'} thread(s); "
          f"LoRA r={args.rank} alpha={2 * args.rank} on all linears; prefix n={args.prefix}")
    header = (f"{'preset':<13} {'method':<10} {'trainable':>11} {'tok/s':>7} {'counted MiB':>12} "
              f"{'pred static':>12} {'pred act':>9} {'pred total':>11} {'RSS delta':>10}")
    print(header)
    print("-" * len(header))
    ctx = mp.get_context("spawn")
    for preset in args.presets:
        for method in args.methods:
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                r = pool.submit(run_one, preset, method, args.batch, args.seq, args.steps, args.rank,
                                args.prefix, args.threads).result()
            print(f"{r['preset']:<13} {r['method']:<10} {r['trainable']:>11,} {r['tok_s']:>7.0f} "
                  f"{r['counted'] / MiB:>12.0f} {r['pred_static'] / MiB:>12.0f} {r['pred_act'] / MiB:>9.0f} "
                  f"{(r['pred_static'] + r['pred_act']) / MiB:>11.0f} {r['rss'] / MiB:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
