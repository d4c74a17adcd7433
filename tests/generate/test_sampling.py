"""Token choice: greedy is argmax, Gumbel-max sampling follows softmax, filters hold, parameters validate."""
import pytest
import torch

from llmkit.generate.sampling import SamplingParams, gumbel_noise, process_logits, select


def test_temperature_zero_is_greedy():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.3)
    assert params.greedy
    assert torch.equal(select(process_logits(logits, params), None), logits.argmax(-1))
    # a vanishing temperature converges to the same choice
    cold = SamplingParams(temperature=1e-4)
    noise = gumbel_noise(logits.shape, logits.device, torch.Generator().manual_seed(1))
    assert torch.equal(select(process_logits(logits, cold), noise), logits.argmax(-1))


def test_gumbel_max_samples_from_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).expand(40_000, 5)
    gen = torch.Generator().manual_seed(0)
    picks = select(logits, gumbel_noise(logits.shape, logits.device, gen))
    freq = torch.bincount(picks, minlength=5).double() / picks.numel()
    assert torch.allclose(freq, logits[0].double().softmax(-1), atol=0.01)


def test_sampling_respects_filters():
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(3)).expand(2000, 30)
    gen = torch.Generator().manual_seed(4)
    processed = process_logits(logits, SamplingParams(temperature=1.5, top_k=3))
    picks = select(processed, gumbel_noise(logits.shape, logits.device, gen))
    assert set(picks.tolist()) == set(logits[0].topk(3).indices.tolist())


def test_same_seed_same_noise():
    a = gumbel_noise((2, 10), torch.device("cpu"), torch.Generator().manual_seed(7))
    b = gumbel_noise((2, 10), torch.device("cpu"), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=-2.5), "frequency_penalty"),
])
def test_invalid_parameters_are_rejected_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad).validate()


def test_penalties_apply_in_greedy_mode():
    logits = torch.tensor([[1.0, 0.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    counts = torch.zeros(1, 3)
    params = SamplingParams(repetition_penalty=1.5)
    assert params.penalised
    assert select(process_logits(logits, params, seen, counts), None).item() == 1
