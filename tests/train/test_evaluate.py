"""Validation loss, perplexity and bits per byte."""
import math

import pytest
import torch

from llmkit.train.distributed import Dist
from llmkit.train.evaluate import evaluate

from .helpers import RandomBatches

CPU = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class Uniform(torch.nn.Module):
    """Logits that put equal mass on every one of V tokens: loss is exactly ln V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_uniform_model_loss_ppl_and_bpb():
    batches = [next(RandomBatches(vocab=256, ignore_frac=0.3)) for _ in range(3)]
    out = evaluate(Uniform(256), batches, 10, CPU, bytes_per_token=1.0)
    assert out["val_loss"] == pytest.approx(math.log(256))
    assert out["val_ppl"] == pytest.approx(256, rel=1e-5)
    assert out["val_bpb"] == pytest.approx(8.0)  # byte tokens, uniform over 256: 8 bits per byte
    assert out["val_tokens"] == sum(int((y != -100).sum()) for _, y in batches)


def test_bpb_divides_by_bytes_not_tokens():
    batches = [next(RandomBatches(vocab=256))]
    one = evaluate(Uniform(256), batches, 10, CPU, bytes_per_token=1.0)
    four = evaluate(Uniform(256), batches, 10, CPU, bytes_per_token=4.0)
    assert four["val_bpb"] == pytest.approx(one["val_bpb"] / 4)
    assert "val_bpb" not in evaluate(Uniform(256), batches, 10, CPU)


def test_max_batches_and_mode_restored():
    model = Uniform(16).train()
    src = RandomBatches(vocab=16)
    out = evaluate(model, src, 2, CPU)
    assert out["val_tokens"] == 2 * 4 * 16 and model.training
