"""Reward modelling: the Bradley-Terry pairwise loss and :class:`RewardModel`.

A reward model scores a (prompt, answer) with one number; under the
Bradley-Terry model ``P(chosen > rejected) = sigmoid(r_c - r_r)``, so the loss
is ``-log sigmoid(r_c - r_r - margin)`` (the optional margin, from Llama 2,
asks for a larger gap where annotators were more certain). Same as TRL's
``RewardTrainer.compute_loss`` per pair.

:class:`RewardModel` is a causal LM whose vocabulary head is swapped for a
scalar ``score`` head (HF's ``ForSequenceClassification`` layout): the score of
a sequence is the head applied to the final hidden state of its last non-pad
token, the one position that has read the whole answer. The backbone keeps
its weight names, so LoRA targets and adapter files work as for the LM.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reward_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float | None = None) -> Tensor:
    """Per-pair Bradley-Terry losses.

    Args:
        chosen_rewards: (B,) scores of the preferred answers.
        rejected_rewards: (B,) scores of the other answers.
        margin: (B,) or scalar gap the chosen score should exceed the rejected one by; None = 0.

    Returns:
        (B,) ``-log sigmoid(chosen - rejected - margin)``.
    """
    diff = chosen_rewards - rejected_rewards
    return -F.logsigmoid(diff if margin is None else diff - margin)


class RewardModel(nn.Module):
    """A CausalLM backbone with a scalar head on the last non-pad token.

    Args:
        backbone: a :class:`~llmkit.model.CausalLM`; its ``lm_head`` is replaced (in place) by an identity,
            so its forward returns the final normed hidden states (B, T, dim).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        backbone.lm_head = nn.Identity()
        self.backbone = backbone
        self.score = nn.Linear(backbone.cfg.dim, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1 / (backbone.cfg.dim + 1) ** 0.5)

    @property
    def cfg(self):
        """The backbone's config, untied: the head is a separate module (what the Trainer's checkpoints record)."""
        return self.backbone.cfg.replace(tie_word_embeddings=False)

    def get_output_embeddings(self) -> nn.Linear:
        """The output head (the score), which LoRA's ``all-linear`` leaves alone as it does an LM head."""
        return self.score

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Scores (B,) of right-padded sequences ``input_ids`` (B, T) with ``lengths`` (B,) real tokens each."""
        hidden = self.backbone(input_ids)  # (B, T, dim)
        last = hidden[torch.arange(input_ids.size(0), device=hidden.device), lengths.to(hidden.device) - 1]
        return self.score(last).squeeze(-1)

    def save(self, path: str | Path) -> Path:
        """Write every weight (backbone and head) as one safetensors file, atomically; returns it."""
        from safetensors.torch import save_file

        from llmkit.io.atomic import atomic_path

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
        return Path(path)

    def load(self, path: str | Path) -> RewardModel:
        """Load weights written by :meth:`save` (strict)."""
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(path)))
        return self
