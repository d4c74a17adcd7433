"""Every flag of every verb explains itself in ``--help`` (help comes from field metadata)."""
import importlib

import pytest

from llmkit.cli import VERBS, main
from llmkit.cli.args import _fields


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_field_of_every_verb_declares_help(verb):
    args = importlib.import_module(f"llmkit.cli.{verb}").Args
    missing = [name for name, (f, _) in _fields(args).items() if not f.metadata.get("help", "").strip()]
    assert not missing, f"llmkit {verb}: no help for {', '.join(missing)}"


def test_speedrun_help_shows_each_fields_text(capsys):
    from llmkit.speedrun import SpeedrunConfig

    with pytest.raises(SystemExit) as caught:
        main(["speedrun", "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, (f, _) in _fields(SpeedrunConfig).items():
        assert f"--{name}" in text and " ".join(f.metadata["help"].split()) in text
