"""TRL's losses, computed by TRL's own trainer code on inputs we choose.

TRL's trainers compute their losses inline, from a model's outputs. To compare
against exactly that code, each helper builds the trainer object without its
``__init__`` (no model, dataset or accelerator is needed), sets only the
attributes the loss method reads, and hands it a stand-in model whose forward
returns the per-token log-probs we chose. Everything is fp64 so a difference
of 1e-6 means a different formula, not rounding. The tests import these
helpers; run this file to print one value of each for a quick look.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


def _accelerator() -> SimpleNamespace:
    same = lambda x, *a, **k: x  # noqa: E731 -- one process: gather/reduce are the identity
    return SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same, reduce=same,
                           unwrap_model=same, num_processes=1, sync_gradients=True)


class _Model:
    """Stands in for TRL's patched forward: returns fixed per-token log-probs (B, T-1) and dummy statistics."""

    def __init__(self, per_token_logps: torch.Tensor, training: bool = True):
        self.per_token_logps, self.training = per_token_logps, training

    def __call__(self, **kwargs):
        lp = self.per_token_logps
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros_like(lp, dtype=torch.bool))


def _bare(cls, **attrs):
    obj = cls.__new__(cls)
    obj.__dict__.update(accelerator=_accelerator(), _metrics=defaultdict(lambda: defaultdict(list)),
                        _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False, **attrs)
    return obj


def trl_dpo_loss(chosen_tok, rejected_tok, chosen_mask, rejected_mask, ref_chosen, ref_rejected, *, beta,
                 loss_type, label_smoothing=0.0) -> torch.Tensor:
    """TRL ``DPOTrainer._compute_loss`` on per-token policy log-probs (B, T) with 0/1 completion masks (B, T).

    Reference log-probs are given per sequence (TRL's precomputed path).
    """
    from trl import DPOTrainer

    tok = torch.cat([chosen_tok, rejected_tok]) * torch.cat([chosen_mask, rejected_mask])
    mask = torch.cat([chosen_mask, rejected_mask])
    # TRL's completion_mask covers input positions; log-probs are for positions 1..T, so prepend a prompt token
    completion_mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1).long()
    inputs = {"input_ids": torch.ones_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    trainer = _bare(DPOTrainer, model=_Model(tok), beta=beta, loss_types=[loss_type], loss_weights=[1.0],
                    label_smoothing=label_smoothing, f_divergence_type="reverse_kl", ld_alpha=None,
                    precompute_ref_logps=True, use_weighting=False, args=SimpleNamespace())
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)


def trl_kto_loss(tok, mask, labels, kl_tok, ref_logps, ref_kl_logps, *, beta, desirable_weight=1.0,
                 undesirable_weight=1.0) -> torch.Tensor:
    """TRL ``KTOTrainer._compute_loss``: per-token log-probs (B, T) of the completions and of the mismatched
    (KL) pairs, 0/1 masks, bool labels (B,), precomputed reference sequence log-probs."""
    from trl import KTOTrainer

    completion_mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1).long()
    inputs = {"input_ids": torch.ones_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "KL_input_ids": torch.ones_like(completion_mask),
              "KL_attention_mask": torch.ones_like(completion_mask), "KL_completion_mask": completion_mask,
              "label": labels, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    outputs = iter([_Model(kl_tok * mask), _Model(tok * mask)])  # the KL forward comes first
    model = SimpleNamespace(training=True)
    trainer = _bare(KTOTrainer, model=model, beta=beta, loss_type="kto", calculate_KL=True, precompute_ref_logps=True,
                    desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, args=SimpleNamespace())
    forward = lambda **kwargs: next(outputs)(**kwargs)  # noqa: E731
    return trainer._compute_loss(forward, inputs, return_outputs=False)


def trl_cpo_losses(chosen, rejected, *, beta, loss_type, simpo_gamma=0.5, label_smoothing=0.0) -> torch.Tensor:
    """TRL ``CPOTrainer.cpo_loss`` (SimPO is ``loss_type="simpo"``) on sequence log-probs (B,)."""
    from trl.experimental.cpo import CPOTrainer

    trainer = _bare(CPOTrainer, alpha=0.0, beta=beta, loss_type=loss_type, simpo_gamma=simpo_gamma,
                    label_smoothing=label_smoothing)
    return trainer.cpo_loss(chosen, rejected)[0]


def trl_orpo_losses(chosen, rejected, *, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL ``ORPOTrainer.odds_ratio_loss``: its (losses, mean log-odds); its losses are *added* to -NLL."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = _bare(ORPOTrainer, beta=beta)
    out = trainer.odds_ratio_loss(chosen, rejected)
    return out[0], out[4]


def trl_grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, loss_type, beta, epsilon_low, epsilon_high,
                  max_completion_length) -> torch.Tensor:
    """TRL ``GRPOTrainer._compute_loss`` with the per-token log-probs (B, T) replaced by ``logps``."""
    from trl import GRPOTrainer

    B, T = logps.shape
    trainer = _bare(GRPOTrainer, model=SimpleNamespace(training=True), beta=beta, loss_type=loss_type,
                    epsilon_low=epsilon_low, epsilon_high=epsilon_high, max_completion_length=max_completion_length,
                    top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
                    use_vllm=False, current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                    args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.ones(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps,
              "num_items_in_batch": mask.sum()}
    return trainer._compute_loss(trainer.model, inputs)


def trl_grpo_advantages(rewards, group_size, scale_rewards) -> torch.Tensor:
    """TRL's advantage lines from ``GRPOTrainer._generate_and_score_completions`` (sum_then_normalize, one reward
    function), which are inline in a method that also generates; kept verbatim, using TRL's own ``nanstd``."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size, dim=0)
    if scale_rewards in ["group", "none"]:
        std = nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean
    return advantages / (std + 1e-4) if scale_rewards != "none" else advantages


def trl_jsd(student_logits, teacher_logits, mask, *, beta, temperature) -> torch.Tensor:
    """TRL ``GKDTrainer.generalized_jsd_loss`` (a static method) with -100 labels off the mask."""
    from trl.experimental.gkd import GKDTrainer

    labels = torch.where(mask.bool(), 0, -100)
    return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels=labels, beta=beta,
                                           temperature=temperature)


if __name__ == "__main__":
    torch.manual_seed(0)
    lp = -torch.rand(2, 4, dtype=torch.float64)
    m = torch.ones(2, 4, dtype=torch.float64)
    print("dpo sigmoid", trl_dpo_loss(lp[:1], lp[1:], m[:1], m[1:], lp[:1].sum(1), lp[1:].sum(1), beta=0.1,
                                      loss_type="sigmoid").item())
