"""Alignment and distillation: preference losses (DPO family, ORPO, SimPO, KTO), reward models, PPO, GRPO, KD.

Losses are pure functions on log-probabilities, one method per module, so each
is testable alone and equal to TRL's to the digit; the loops that compute
those log-probs from a model live apart from them.

- ``dpo.py``: :func:`dpo_loss` with every ``loss_type`` of :data:`DPO_LOSSES`.
- ``orpo.py`` / ``simpo.py`` / ``kto.py``: reference-free and unpaired variants.
- ``reward.py``: the Bradley-Terry :func:`reward_loss`.
- ``ppo.py``: GAE, clipped policy and value losses, entropy bonus, KL-penalised rewards, adaptive KL;
  ``rlhf.py``: the PPO loop's objective (rollouts, value head on the policy, the KL controller).
- ``grpo.py``: group-relative advantages and the GRPO/BNPO/Dr. GRPO/DAPO losses.
- ``distill.py``: forward/reverse KL and generalised JSD distillation, GKD's on-policy mix.
- ``ops.py``: masked means and token log-probs shared by all of them.

The loops: ``logps.py`` (completion and reference log-probs), ``data.py`` (jsonl
readers), ``builtin.py`` (offline sets), ``objectives.py`` / ``online.py`` (what
each method computes per batch), ``trainer.py`` (the Trainer with that objective),
``run.py`` (:func:`align`, the whole run; the CLI is ``llmkit align METHOD``).
"""
from llmkit.align.config import AlignConfig
from llmkit.align.distill import gkd_on_policy, jsd_loss, kd_loss, reverse_kl_loss
from llmkit.align.dpo import DPO_LOSSES, dpo_loss
from llmkit.align.grpo import grpo_advantages, grpo_loss, k3_kl
from llmkit.align.kto import kto_loss
from llmkit.align.orpo import orpo_loss
from llmkit.align.ppo import (AdaptiveKLController, entropy_bonus, gae, kl_penalty_rewards, ppo_policy_loss,
                              ppo_value_loss)
from llmkit.align.reward import RewardModel, reward_loss
from llmkit.align.run import align
from llmkit.align.simpo import simpo_loss

__all__ = [
    "AdaptiveKLController", "AlignConfig", "DPO_LOSSES", "RewardModel", "align", "dpo_loss", "entropy_bonus", "gae",
    "gkd_on_policy", "grpo_advantages", "grpo_loss", "jsd_loss", "k3_kl", "kd_loss", "kl_penalty_rewards", "kto_loss",
    "orpo_loss", "ppo_policy_loss", "ppo_value_loss", "reverse_kl_loss", "reward_loss", "simpo_loss",
]
