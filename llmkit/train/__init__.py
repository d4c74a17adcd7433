"""Training: pretraining and SFT of a CausalLM, on one device or under torchrun.

``Trainer(TrainConfig(...)).fit()`` runs a whole training run; the CLI is
``llmkit train RECIPE.yaml``. One concern per module: ``config`` (the typed
run config), ``schedule`` (learning rates), ``optim`` (AdamW groups,
freezing), ``precision`` (autocast, loss scaling), ``activation_checkpoint``,
``data`` (batches from shards, corpora or conversations), ``evaluate`` (loss,
perplexity, bits per byte), ``metrics`` (JSON lines, plots), ``checkpoint``
(atomic, verified, resumable), ``distributed`` (DDP/FSDP2) and ``trainer``
(the loop).
"""
from llmkit.train.config import ModelOverrides, TrainConfig
from llmkit.train.data import Data
from llmkit.train.trainer import FitResult, Trainer

__all__ = ["Data", "FitResult", "ModelOverrides", "TrainConfig", "Trainer"]
