"""KTO (Ethayarajh et al., 2024): alignment from unpaired good/bad labels, after prospect theory.

A desirable answer is pushed above, an undesirable one below, a reference
point: the policy's KL to the reference, estimated from *mismatched* pairs
(each prompt with another example's completion) so it carries no signal about
the label. The estimate is detached and clamped at 0, as in the paper and
TRL's ``KTOTrainer``:

    kl = max(0, mean(logp_policy(y'|x) - logp_ref(y'|x)))
    desirable:   1 - sigmoid(beta * (logratio - kl))
    undesirable: 1 - sigmoid(beta * (kl - logratio))
"""
from __future__ import annotations

import torch
from torch import Tensor


def kto_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, policy_kl_logps: Tensor,
             ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, ref_kl_logps: Tensor, *, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-example KTO losses for a batch of desirable (chosen) and undesirable (rejected) examples.

    Args:
        policy_chosen_logps: (Nc,) summed log-probs of the desirable completions under the policy.
        policy_rejected_logps: (Nr,) the same for the undesirable completions.
        policy_kl_logps: (M,) log-probs of the mismatched (prompt, completion) pairs under the policy.
        ref_chosen_logps: (Nc,) desirable completions under the reference.
        ref_rejected_logps: (Nr,) undesirable completions under the reference.
        ref_kl_logps: (M,) mismatched pairs under the reference.
        beta: inverse temperature.
        desirable_weight: weight of the desirable losses (lambda_D).
        undesirable_weight: weight of the undesirable losses (lambda_U).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards, kl)``: losses (Nc + Nr,), desirable first; the
        rewards ``beta * logratio`` (detached); kl a detached scalar.
    """
    kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (chosen - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected)))])
    return losses, beta * chosen.detach(), beta * rejected.detach(), kl
