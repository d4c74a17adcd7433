"""Fine-tuning a pretrained chat model on conversations: full, LoRA, DoRA, QLoRA, prefix or prompt tuning.

``finetune(FinetuneConfig(...))`` (CLI: ``llmkit finetune``) is glue between
three parts that already exist: a loader (:func:`llmkit.generate.load_model_and_tokenizer`,
a GGUF file or an HF directory), the adapters of :mod:`llmkit.peft`, and the
:class:`~llmkit.train.Trainer` running SFT (loss on assistant tokens only).
The run is:

1. load the base model (fp32) and its tokenizer; for ``qlora`` quantise every
   linear but the head to NF4 -- the model training starts from;
2. greedy answers to the first ``samples`` validation questions ("before");
3. attach the method (``full`` unfreezes everything), print the trainable share;
4. validation loss with the adapters disabled ("before"), train, validation
   loss at the last step ("after"), the same answers again;
5. write the result (below) and ``finetune.json`` (config, counts, losses, answers).

Outputs in ``out_dir``:

- ``adapter/``: LoRA/DoRA/QLoRA in peft's format (:func:`llmkit.peft.save_adapter`),
  which ``llmkit chat --model BASE --adapter out_dir/adapter`` and peft load.
  ``save_adapter`` covers the LoRA family and IA3 only, so prefix/prompt tuning
  save ``virtual_tokens.safetensors`` (the trainable tensors, named as in the
  wrapped model) + ``virtual_tokens.json`` (method, length, base), read back by
  :func:`load_virtual_tokens`.
- ``model/``: with ``merge`` (LoRA family) or always for ``full``, the merged
  model in HF layout with the tokenizer beside it (``llmkit chat --model out_dir/model``).
  A merged QLoRA model holds the dequantised NF4 base plus the update.
- ``train/``: the Trainer's metrics, curves and checkpoints (for ``resume``).

It runs in one process (not under torchrun): the outputs are written by it alone.

Defaults. ``target_modules`` is every linear layer but the head ("all-linear"):
the QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, sec. 4) found LoRA on
all linears necessary to match full fine-tuning, while q/v-only LoRA falls
short; on SmolLM2-135M at r=16 that is 4.9M parameters (3.5%) against 1.8M for
q/k/v/o, a small price. The learning rate defaults per method (``METHOD_LR``):
a rate that suits 5M fresh adapter weights (1e-3) wrecks a full fine-tune
(2e-5), and the 20 virtual tokens of prompt tuning need far more (3e-2, as in
peft's examples).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmkit.io.errors import CheckpointError
from llmkit.train.config import DType, Schedule

Method = Literal["lora", "qlora", "dora", "full", "prefix", "prompt"]
LORA_METHODS = ("lora", "qlora", "dora")
VIRTUAL_METHODS = ("prefix", "prompt")
METHOD_LR = {"full": 2e-5, "lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "prefix": 1e-2, "prompt": 3e-2}
SAMPLE_TOKENS = 80  # greedy tokens per before/after answer
VIRTUAL_FORMAT = "llmkit-virtual-tokens-v1"


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run; the training fields are passed through to :class:`~llmkit.train.TrainConfig`."""

    # --- what ---
    method: Method = field(default="lora", metadata=_help("what to train"))
    model: str = field(default="smollm2-135m-instruct", metadata=_help("model name, HF directory or .gguf file"))
    data: str = field(default="austen-chat", metadata=_help(
        'a .jsonl of {"messages": [...]} per line, or a named chat set (austen-chat, shakespeare-chat)'))
    val_data: str = field(default="", metadata=_help(
        "validation .jsonl or named set; empty: the named set's val split (a .jsonl data: no validation)"))
    out_dir: str = field(default="out/finetune", metadata=_help("adapter/, model/, train/, finetune.json"))

    # --- method ---
    r: int = field(default=16, metadata=_help("LoRA rank"))
    alpha: float = field(default=32.0, metadata=_help("LoRA scale numerator (scale = alpha / r)"))
    dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata=_help(
        "layers LoRA wraps: all-linear (every linear but the head) or names, e.g. q_proj,k_proj,v_proj,o_proj"))
    n_virtual: int = field(default=20, metadata=_help("prompt: virtual tokens; prefix: prefix length"))
    merge: bool = field(default=False, metadata=_help("also write the merged model to out_dir/model (LoRA family)"))

    # --- training ---
    max_steps: int = field(default=100, metadata=_help("optimizer steps"))
    batch_size: int = field(default=8, metadata=_help("conversations per step"))
    seq_len: int = field(default=256, metadata=_help("tokens per conversation at most (longer ones are cut)"))
    lr: float | None = field(default=None, metadata=_help(f"peak learning rate; default per method {METHOD_LR}"))
    warmup_steps: int = field(default=10, metadata=_help("linear warmup steps"))
    schedule: Schedule = field(default="cosine", metadata=_help(
        "learning-rate schedule after warmup (decays to lr / 10)"))
    eval_every: int = field(default=0, metadata=_help("steps between validation runs; 0 = before and after only"))
    eval_batches: int = field(default=20, metadata=_help("validation batches per evaluation"))
    save_every: int = field(default=0, metadata=_help("steps between resumable checkpoints; 0 = at the end"))
    seed: int = field(default=1337, metadata=_help("seeds adapter init, dropout and data order"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    dtype: DType = field(default="fp32", metadata=_help(
        "fp32, or bf16/fp16 autocast (weights stay fp32)"))
    resume: bool = field(default=False, metadata=_help("continue the run in out_dir from its newest checkpoint"))
    plot: bool = field(default=True, metadata=_help("draw out_dir/train/curves.png (needs matplotlib)"))

    # --- report ---
    samples: int = field(default=0, metadata=_help(
        "greedy answers to the first N validation questions, before and after (printed, in finetune.json)"))

    def validate(self) -> FinetuneConfig:
        """Check the fields; raise ``ValueError`` naming the first bad one. Returns self."""
        hints = typing.get_type_hints(FinetuneConfig)
        for f in dataclasses.fields(self):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r}: choose from {', '.join(choices)}")
        for name in ("r", "n_virtual", "max_steps", "batch_size", "seq_len", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not self.target_modules:
            raise ValueError("target_modules is empty: give all-linear or layer names")
        if self.merge and self.method in VIRTUAL_METHODS:
            raise ValueError(f"--merge: {self.method} tuning adds virtual tokens, which cannot be merged into weights")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----- data -----
def resolve_data(data: str, val_data: str = "") -> tuple[Path, Path | None]:
    """The (train, val) conversation files: named chat sets' splits, or the given ``.jsonl`` paths.

    Raises:
        FileNotFoundError: a path that does not exist (the message names the named sets).
    """
    from llmkit.data.chat import CHAT_SETS, chat_set_path

    def path(name: str, split: str) -> Path:
        if name in CHAT_SETS:
            return chat_set_path(name, split)
        p = Path(name).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no such conversation file {name!r} (give a .jsonl of {{\"messages\": [...]}} "
                                    f"or a named chat set: {', '.join(CHAT_SETS)})")
        return p

    train = path(data, "train")
    if val_data:
        return train, path(val_data, "val")
    return train, (chat_set_path(data, "val") if data in CHAT_SETS else None)


def _held_out(val: Path | None, n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` validation conversations (the last message is the reference answer)."""
    from llmkit.train.data import read_conversations

    return read_conversations(val)[:n] if val and n else []


# ----- the methods -----
class AdapterLM(nn.Module):
    """A prefix- or prompt-tuned model with the ``CausalLM`` interface the Trainer and ``generate`` use.

    :class:`~llmkit.peft.PrefixTuningLM` and :class:`~llmkit.peft.VirtualTokenLM` wrap the whole
    model but lack what those callers read: ``cfg``, ``return_aux_loss``, and the base's ``model``
    (decoder stack, whose caches ``generate`` inspects), ``lm_head`` and ``cache_len``. This adds
    them. The n virtual tokens occupy the first n positions and cache slots of every sequence, so
    ``cfg.max_seq_len`` and ``cache_len`` are the base's minus n.

    Args:
        wrapped: the prefix/prompt wrapper (its ``base_model`` is the CausalLM).
        cfg: the base config with ``max_seq_len`` reduced by ``n_virtual``.
        n_virtual: virtual tokens (prompt) or prefix length (prefix).
    """

    def __init__(self, wrapped: nn.Module, cfg, n_virtual: int):
        super().__init__()
        self.wrapped, self.cfg, self.n_virtual = wrapped, cfg, n_virtual

    @property
    def model(self) -> nn.Module:
        return self.wrapped.base_model.model

    @property
    def lm_head(self) -> nn.Module:
        return self.wrapped.base_model.lm_head

    @property
    def cache_len(self) -> int:
        return max(self.wrapped.base_model.cache_len - self.n_virtual, 0)

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_aux_loss: bool = False,
                logits_to_keep: int = 0):
        logits = self.wrapped(input_ids, input_pos=input_pos, attention_mask=attention_mask,
                              logits_to_keep=logits_to_keep)
        return (logits, logits.new_zeros(())) if return_aux_loss else logits  # no MoE: no balancing loss

    def setup_caches(self, max_batch_size: int, max_seq_len: int, **kwargs) -> None:
        self.wrapped.setup_caches(max_batch_size, max_seq_len, **kwargs)

    def clear_caches(self) -> None:
        self.wrapped.clear_caches()


def prepare_base(model: nn.Module, method: str) -> nn.Module:
    """The model training starts from: an NF4-quantised copy for ``qlora``, ``model`` itself otherwise."""
    from llmkit.peft import quantize_model_4bit

    return quantize_model_4bit(model) if method == "qlora" else model


def attach(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Put ``cfg.method`` on ``model`` (in place where possible); only its parameters stay trainable."""
    from llmkit.peft import apply_lora, apply_prefix_tuning, apply_prompt_tuning

    if cfg.method == "full":
        return model.requires_grad_(True)
    if cfg.method in LORA_METHODS:
        targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        return apply_lora(model, targets, cfg.r, cfg.alpha, cfg.dropout, use_dora=cfg.method == "dora")
    base_cfg = model.cfg.replace(max_seq_len=model.cfg.max_seq_len - cfg.n_virtual, tie_word_embeddings=False)
    if model.cfg.tie_word_embeddings:
        # Trainer checkpoints (io.hf.save_hf) drop only a top-level tied "lm_head.weight"; under the wrapper the
        # tied pair has other names and safetensors refuses shared tensors. Both stay frozen: the math is unchanged.
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    wrap = apply_prefix_tuning if cfg.method == "prefix" else apply_prompt_tuning
    return AdapterLM(wrap(model, cfg.n_virtual), base_cfg, cfg.n_virtual)


# ----- saving -----
def save_virtual_tokens(model: AdapterLM, method: str, n_virtual: int, base: str, directory: str | Path) -> None:
    """Write a prefix/prompt-tuned model's trainable tensors and a JSON config to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(directory / "virtual_tokens.safetensors"), metadata={"format": "pt"})
    config = {"format": VIRTUAL_FORMAT, "method": method, "n_virtual": n_virtual, "base_model": base}
    (directory / "virtual_tokens.json").write_text(json.dumps(config, indent=2))


def load_virtual_tokens(model: nn.Module, directory: str | Path) -> AdapterLM:
    """Wrap the base ``model`` as :func:`save_virtual_tokens` describes and load the saved tensors.

    Raises:
        CheckpointError: not such a directory, or tensors that do not fit the model.
    """
    directory = Path(directory)
    try:
        config = json.loads((directory / "virtual_tokens.json").read_text())
        tensors = load_file(str(directory / "virtual_tokens.safetensors"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory} holds no virtual tokens: {e}") from None
    if config.get("format") != VIRTUAL_FORMAT or config.get("method") not in VIRTUAL_METHODS:
        raise CheckpointError(f"{directory / 'virtual_tokens.json'}: not a {VIRTUAL_FORMAT} config")
    wrapped = attach(model, FinetuneConfig(method=config["method"], n_virtual=config["n_virtual"]))
    own = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    if set(own) != set(tensors) or any(own[n].shape != t.shape for n, t in tensors.items()):
        raise CheckpointError(f"{directory}: saved tensors {sorted(tensors)} do not fit this model's "
                              f"{config['method']} parameters")
    with torch.no_grad():
        for n, t in tensors.items():
            own[n].copy_(t)
    return wrapped.eval()


def save_outputs(model: nn.Module, tokenizer, cfg: FinetuneConfig) -> dict[str, str]:
    """Write the adapter and/or merged model of a trained ``model``; returns {"adapter"|"model": path}.

    Merging happens last because it removes the adapters from ``model``.
    """
    from llmkit.peft import merge_and_unload, save_adapter

    out, written = Path(cfg.out_dir), {}
    if cfg.method in LORA_METHODS:
        save_adapter(model, out / "adapter")
        written["adapter"] = str(out / "adapter")
    elif cfg.method in VIRTUAL_METHODS:
        save_virtual_tokens(model, cfg.method, cfg.n_virtual, cfg.model, out / "adapter")
        written["adapter"] = str(out / "adapter")
    if cfg.merge or cfg.method == "full":
        merged = model if cfg.method == "full" else merge_and_unload(model)
        merged.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        written["model"] = str(out / "model")
    return written


# ----- the run -----
def train_config(cfg: FinetuneConfig, train: Path, val: Path | None, tokenizer: Path):
    """The :class:`~llmkit.train.TrainConfig` of ``cfg``: SFT on ``train``, checkpoints in ``out_dir/train``."""
    from llmkit.train import TrainConfig

    lr = cfg.lr or METHOD_LR[cfg.method]
    return TrainConfig(task="sft", model=cfg.model, tokenizer=str(tokenizer), data=str(train),
                       val_data=str(val) if val else "", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                       max_steps=cfg.max_steps, lr=lr, min_lr=lr / 10, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                       save_every=cfg.save_every, keep_last=1,  # each checkpoint holds the whole base model
                       seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, plot=cfg.plot,
                       out_dir=str(Path(cfg.out_dir) / "train"))


def _answers(model: nn.Module, tokenizer, questions: list[list[dict[str, str]]]) -> list[str]:
    """Greedy replies (at most ``SAMPLE_TOKENS``) to each conversation, in eval mode; frees the KV cache."""
    from llmkit.generate import generate

    if not questions:
        return []
    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, questions, max_new_tokens=SAMPLE_TOKENS).texts
    finally:  # a cache left behind would lack the slots of virtual tokens attached later
        model.clear_caches()
        model.train(was_training)


def _loss_line(metrics: dict[str, float]) -> str:
    return f"val loss {metrics['val_loss']:.4f} (ppl {metrics['val_ppl']:.2f}, {metrics['val_tokens']} tokens)"


def finetune(cfg: FinetuneConfig) -> dict[str, Any] | None:
    """Fine-tune as ``cfg`` says, write the outputs and ``out_dir/finetune.json``, and return that report.

    Returns:
        The report, or None when training was interrupted (Ctrl-C): a checkpoint was saved and the
        same command with ``resume=True`` continues.
    Raises:
        FileNotFoundError: missing data or model files.
        ValueError: a bad config, or an ``out_dir`` holding a run without ``resume``.
    """
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.pull import resolve_model
    from llmkit.peft import disable_adapters, trainable_parameters
    from llmkit.train import Trainer
    from llmkit.train.checkpoint import latest_checkpoint

    cfg = cfg.validate()
    out = Path(cfg.out_dir)
    train_path, val_path = resolve_data(cfg.data, cfg.val_data)
    if latest_checkpoint(out / "train") is not None and not cfg.resume:
        raise ValueError(f"{out} already holds a fine-tuning run: continue it with --resume (and a larger "
                         "--max_steps), or choose another --out_dir")
    source = resolve_model(cfg.model)
    model, tokenizer = load_model_and_tokenizer(source)
    model = prepare_base(model.float(), cfg.method)
    held_out = _held_out(val_path, cfg.samples)
    before_answers = _answers(model, tokenizer, [conv[:-1] for conv in held_out])
    base_total = trainable_parameters(model)[1]
    torch.manual_seed(cfg.seed)
    model = attach(model, cfg)
    trainable = trainable_parameters(model)[0]
    total = base_total if cfg.method == "full" else base_total + trainable  # an untied head is not new
    print(f"llmkit finetune: {cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters trainable "
          f"({100 * trainable / total:.2f}%)", flush=True)

    trainer = Trainer(train_config(cfg, train_path, val_path, source), model=model, resume=cfg.resume)
    try:
        with disable_adapters(model):  # the starting point (full fine-tuning: the weights as loaded or resumed)
            before = trainer.evaluate()
        if before:
            print(f"llmkit finetune: before: {_loss_line(before)}", flush=True)
        start = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - start
        # the last step evaluates; a resumed run that was already finished has no last step
        after = {} if result.interrupted else result.eval or trainer.evaluate()
    finally:
        trainer.close()
    if result.interrupted:
        print("llmkit finetune: interrupted; the same command with --resume continues", flush=True)
        return None
    # the Trainer exports its model as an HF directory; with adapters that holds wrapper tensor names no loader
    # takes (and for full fine-tuning it would duplicate out_dir/model), so our outputs replace it
    shutil.rmtree(out / "train" / "model", ignore_errors=True)
    if after:
        print(f"llmkit finetune: after:  {_loss_line(after)}", flush=True)
    after_answers = _answers(model, tokenizer, [conv[:-1] for conv in held_out])
    written = save_outputs(model, tokenizer, cfg)
    report = {
        "config": cfg.to_dict(), "base_model": str(source), "trainable_parameters": trainable,
        "total_parameters": total, "steps": result.step, "train_seconds": round(seconds, 1),
        "last_train_loss": result.last.get("loss"), "before": before, "after": after, "outputs": written,
        "samples": [{"question": conv[-2]["content"], "reference": conv[-1]["content"], "before": b, "after": a}
                    for conv, b, a in zip(held_out, before_answers, after_answers)],
    }
    (out / "finetune.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for i, s in enumerate(report["samples"], 1):
        print(f"\n[{i}] Q: {s['question']}\n    reference: {s['reference']}\n    before: {s['before']}\n"
              f"    after:  {s['after']}")
    print(f"llmkit finetune: wrote {', '.join(written.values())} and {out / 'finetune.json'}", flush=True)
    return report
