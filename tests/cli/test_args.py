"""The dataclass-driven CLI: flags, YAML configs, type conversion, one-line errors."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from llmkit.cli import main
from llmkit.cli.args import UsageError, add_dataclass_arguments, parse_dataclass


@dataclass
class Optim:
    beta2: float = 0.95


@dataclass
class Args:
    lr: float = 3e-4
    max_steps: int = 10
    schedule: Literal["cosine", "linear"] = "cosine"
    compile: bool = False
    name: str | None = None
    stops: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)

    def validate(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Args)
    return parse_dataclass(Args, p.parse_args(argv))


def test_defaults_flags_and_dash_spelling():
    assert _parse([]) == Args()
    a = _parse(["--lr", "1e-3", "--max-steps", "30", "--compile", "--optim.beta2", "0.9", "--stops", "a,b"])
    assert (a.lr, a.max_steps, a.compile, a.optim.beta2, a.stops) == (1e-3, 30, True, 0.9, ["a", "b"])


def test_yaml_config_is_converted_and_overridden(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 3e-4\nmax_steps: 5\noptim:\n  beta2: 0.99\nname: null\n")
    a = _parse(["--config", str(cfg), "--max_steps", "7"])
    assert isinstance(a.lr, float) and a.lr == 3e-4  # YAML reads 3e-4 as a string
    assert (a.max_steps, a.optim.beta2, a.name) == (7, 0.99, None)


@pytest.mark.parametrize("argv, msg", [
    (["--max_steps", "x"], "expected int"),
    (["--schedule", "step"], "not one of"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--compile", "maybe"], "true/false"),
])
def test_bad_values_raise_usage_error(argv, msg):
    with pytest.raises(UsageError, match=msg):
        _parse(argv)


def test_unknown_yaml_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1\n")
    with pytest.raises(UsageError, match="unknown option.*learning_rate"):
        _parse(["--config", str(cfg)])


def test_info_verb_on_a_preset(capsys):
    assert main(["info", "llama-3-8b"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "GQA 32/8" in out


def test_bad_input_is_one_line_exit_2(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmkit info: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_verb_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
