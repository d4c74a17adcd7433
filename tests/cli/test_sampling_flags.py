"""The sampling flags of ``generate``/``chat`` are SamplingParams' own fields, flattened to top-level flags."""
import argparse
import dataclasses

import pytest

from llmkit.cli.args import UsageError, add_dataclass_arguments, parse_dataclass
from llmkit.cli.generate import DEFAULT_TEMPERATURE, Args
from llmkit.generate import SamplingParams


def _parse(argv, cls=Args):
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, cls)
    return parse_dataclass(cls, p.parse_args(argv))


def test_every_sampling_field_is_a_top_level_flag():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Args)
    flags = {a.dest for a in p._actions}
    choice = {f.name for f in dataclasses.fields(SamplingParams) if not f.metadata.get("request")}
    assert choice <= flags  # the per-request fields are the verb's own --max_new_tokens, --stop, --seed
    assert {"max_new_tokens", "stop", "seed"} <= flags
    assert not any(d.startswith("sampling") for d in flags)


def test_flags_and_yaml_reach_the_sampling_params(tmp_path):
    args = _parse(["--prompt", "x", "--temperature", "0.3", "--top_p", "0.9", "--frequency-penalty", "0.5"])
    assert args.generate_kwargs()["sampling"] == SamplingParams(temperature=0.3, top_p=0.9, frequency_penalty=0.5)
    config = tmp_path / "gen.yaml"
    config.write_text("temperature: 0.2\nmin_p: 0.1\nmax_new_tokens: 7\n")
    args = _parse(["--config", str(config), "--min_p", "0.05"])
    assert args.sampling_params() == SamplingParams(temperature=0.2, min_p=0.05)
    assert args.max_new_tokens == 7


def test_the_temperature_default_depends_on_beam_search():
    assert _parse([]).sampling_params() == SamplingParams(temperature=DEFAULT_TEMPERATURE)
    assert _parse(["--num_beams", "3"]).sampling_params().greedy
    with pytest.raises(UsageError, match="does not sample"):
        _parse(["--num_beams", "3", "--temperature", "0.5"])


def test_bad_values_name_the_flag(tmp_path):
    with pytest.raises(UsageError, match=r"^--top_p must be in \(0, 1\]"):
        _parse(["--top_p", "0"])
    config = tmp_path / "gen.yaml"
    config.write_text("top_q: 0.5\n")
    with pytest.raises(UsageError, match="unknown option.*top_q"):
        _parse(["--config", str(config)])
