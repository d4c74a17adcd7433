"""`AlignConfig`: one alignment run; the CLI's flags (``llmkit align METHOD``) are its fields.

The training fields pass through to :class:`~llmkit.train.TrainConfig` (the
Trainer underneath gives checkpoints, exact resume, mixed precision,
accumulation and torchrun). Method knobs keep TRL's names and defaults where
TRL has them (``beta``, ``loss_type``, ``label_smoothing``, ``epsilon_low`` ...),
so a TRL recipe reads across.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.align.grpo import GRPOLossType, ScaleRewards
from llmkit.train.config import DType, Schedule, _help
from llmkit.validate import check_choices

Method = Literal["reward", "dpo", "orpo", "simpo", "kto", "ppo", "grpo", "distill", "best-of-n"]
DPOLossType = Literal["sigmoid", "robust", "hinge", "ipo", "exo_pair", "bco_pair", "sppo_hard", "nca_pair",
                      "apo_zero", "apo_down", "sigmoid_norm"]
PEFT = Literal["lora", "none"]
DEFAULT_DATA = {"ppo": "arithmetic", "grpo": "arithmetic", "best-of-n": "arithmetic",
                "distill": "austen-chat"}  # others: austen-prefs
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1, "ppo": 0.05, "grpo": 0.0, "reward": 0.0,
                "distill": 0.0, "best-of-n": 0.0}


@dataclass(frozen=True)
class AlignConfig:
    """One alignment run."""

    # --- what ---
    method: Method = field(default="dpo", metadata=_help("the alignment method"))
    model: str = field(default="smollm2-135m-instruct", metadata=_help(
        "model name, HF directory or .gguf file; distill: the student, which may also be a preset (random init)"))
    teacher: str = field(default="", metadata=_help("distill: the teacher (shares the student's tokenizer)"))
    data: str = field(default="", metadata=_help(
        "preference/KTO/prompt/conversation .jsonl, or a built-in set (austen-prefs, shakespeare-prefs, "
        "arithmetic, austen-chat, shakespeare-chat); empty: arithmetic for grpo, austen-chat for distill, "
        "austen-prefs otherwise"))
    val_data: str = field(default="", metadata=_help("held-out .jsonl; empty: the built-in set's val split"))
    out_dir: str = field(default="out/align", metadata=_help(
        "train/ (checkpoints, metrics.jsonl), curves.png, report.md, align.json, adapter/ or model/"))

    # --- policy ---
    peft: PEFT = field(default="lora", metadata=_help(
        "lora: train LoRA adapters (the reference is the model with adapters off); none: all weights"))
    r: int = field(default=16, metadata=_help("LoRA rank"))
    alpha: float = field(default=32.0, metadata=_help("LoRA scale numerator"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA input"))

    # --- method ---
    loss_type: DPOLossType = field(default="sigmoid", metadata=_help("dpo: the DPO-family loss"))
    beta: float | None = field(default=None, metadata=_help(
        f"the method's beta; default {DEFAULT_BETA} (grpo: weight of the k3 KL penalty; distill: the JSD "
        "mix, 0 = forward KL, 1 = reverse KL)"))
    label_smoothing: float = field(default=0.0, metadata=_help("dpo robust/exo_pair, simpo: label noise"))
    gamma: float = field(default=0.5, metadata=_help("simpo: target reward margin"))
    desirable_weight: float = field(default=1.0, metadata=_help("kto: weight of desirable examples"))
    undesirable_weight: float = field(default=1.0, metadata=_help("kto: weight of undesirable examples"))
    group_size: int = field(default=4, metadata=_help("grpo, best-of-n: completions sampled per prompt"))
    max_new_tokens: int = field(default=32, metadata=_help("ppo, grpo: tokens per sampled completion at most"))
    temperature: float = field(default=1.0, metadata=_help(
        "ppo, grpo: sampling temperature of the rollouts; distill: of the softmaxes and the student's samples"))
    reward_model: str = field(default="", metadata=_help(
        "ppo, best-of-n: score with the reward model of this `llmkit align reward` out_dir; empty: verify answers"))
    cliprange: float = field(default=0.2, metadata=_help("ppo: the policy ratio is clipped to 1 +- this"))
    cliprange_value: float = field(default=0.2, metadata=_help("ppo: a value moves at most this from the rollout's"))
    vf_coef: float = field(default=0.1, metadata=_help("ppo: weight of the value loss"))
    ent_coef: float = field(default=0.0, metadata=_help("ppo: weight of the entropy bonus"))
    discount: float = field(default=1.0, metadata=_help("ppo: GAE's gamma (per-token discount)"))
    lam: float = field(default=0.95, metadata=_help("ppo: GAE's lambda"))
    kl_target: float = field(default=6.0, metadata=_help("ppo: KL (nats per completion) the adaptive controller holds"))
    kl_horizon: int = field(default=10000, metadata=_help("ppo: samples over which the controller corrects an error"))
    ppo_epochs: int = field(default=1, metadata=_help(
        "ppo: optimizer steps on each rollout (must divide save_every and max_steps)"))
    min_score: float | None = field(default=None, metadata=_help(
        "best-of-n: keep a prompt's best sample only at or above this score (default: a correct answer)"))
    lmbda: float = field(default=0.0, metadata=_help("distill: share of steps on student-sampled completions (GKD)"))
    epsilon_low: float = field(default=0.2, metadata=_help("grpo: the ratio is clipped below at 1 - this"))
    epsilon_high: float = field(default=0.28, metadata=_help("grpo: the ratio is clipped above at 1 + this"))
    grpo_loss_type: GRPOLossType = field(default="dapo", metadata=_help("grpo: how token losses are averaged"))
    scale_rewards: ScaleRewards = field(default="group", metadata=_help("grpo: advantage scaling"))
    n_prompts: int = field(default=512, metadata=_help("grpo on arithmetic: training problems (val: 64)"))

    # --- training ---
    max_steps: int = field(default=100, metadata=_help("optimizer steps"))
    batch_size: int = field(default=8, metadata=_help("pairs (grpo: prompts) per micro-batch"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    seq_len: int = field(default=256, metadata=_help("tokens per sequence at most (prompt + answer)"))
    lr: float | None = field(default=None, metadata=_help("peak learning rate; default 1e-4 with LoRA, 1e-6 without"))
    warmup_steps: int = field(default=5, metadata=_help("linear warmup steps"))
    schedule: Schedule = field(default="cosine", metadata=_help("learning-rate schedule (decays to lr / 10)"))
    eval_every: int = field(default=0, metadata=_help("steps between held-out evaluations; 0 = before and after"))
    eval_batches: int = field(default=20, metadata=_help("held-out batches per evaluation"))
    save_every: int = field(default=0, metadata=_help("steps between resumable checkpoints; 0 = at the end"))
    seed: int = field(default=1337, metadata=_help("seeds adapter init, data order and sampling"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    dtype: DType = field(default="fp32", metadata=_help("fp32, or bf16/fp16 autocast"))
    resume: bool = field(default=False, metadata=_help("continue the run in out_dir from its newest checkpoint"))
    plot: bool = field(default=True, metadata=_help("draw out_dir/curves.png (needs matplotlib)"))
    samples: int = field(default=3, metadata=_help("held-out prompts answered greedily before and after (report)"))

    @property
    def method_beta(self) -> float:
        return DEFAULT_BETA[self.method] if self.beta is None else self.beta

    @property
    def method_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.peft == "lora" else 1e-6)

    @property
    def data_name(self) -> str:
        return self.data or DEFAULT_DATA.get(self.method, "austen-prefs")

    def validate(self) -> AlignConfig:
        """Check the fields; raise ``ValueError`` naming the first bad one. Returns self."""
        check_choices(self)
        for name in ("r", "max_steps", "batch_size", "grad_accum", "seq_len", "eval_batches", "max_new_tokens",
                     "n_prompts", "ppo_epochs", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"AlignConfig.{name}={getattr(self, name)}: must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "samples", "label_smoothing", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"AlignConfig.{name}={getattr(self, name)}: must be >= 0")
        if self.method in ("grpo", "best-of-n") and self.group_size < 2:
            raise ValueError(f"AlignConfig.group_size={self.group_size}: {self.method} needs >= 2 samples per prompt")
        if self.method == "ppo":
            if self.max_steps % self.ppo_epochs or self.save_every % self.ppo_epochs:
                raise ValueError(f"AlignConfig.ppo_epochs={self.ppo_epochs}: must divide max_steps ({self.max_steps}) "
                                 f"and save_every ({self.save_every}), so checkpoints fall between rollouts")
            for name in ("cliprange", "cliprange_value", "kl_target"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"AlignConfig.{name}={getattr(self, name)}: must be > 0")
            if not (0 <= self.lam <= 1 and 0 <= self.discount <= 1) or self.vf_coef < 0 or self.ent_coef < 0:
                raise ValueError("AlignConfig: ppo needs lam and discount in [0, 1], vf_coef and ent_coef >= 0")
        if self.method == "distill":
            if not self.teacher:
                raise ValueError("AlignConfig.teacher='': distill needs a teacher model")
            if not (0.0 <= self.method_beta <= 1.0 and 0.0 <= self.lmbda <= 1.0):
                raise ValueError(f"AlignConfig.beta={self.beta}, lmbda={self.lmbda}: distill needs both in [0, 1]")
        elif self.method_beta < 0 or (self.method not in ("ppo", "grpo", "reward", "best-of-n")
                                      and self.method_beta == 0):
            raise ValueError(f"AlignConfig.beta={self.beta}: must be > 0 for {self.method}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"AlignConfig.lr={self.lr}: must be > 0")
        if self.temperature <= 0:
            raise ValueError(f"AlignConfig.temperature={self.temperature}: sampling needs > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
