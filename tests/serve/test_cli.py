"""``llmkit serve`` flags: bad values are one-line errors with exit code 2."""
from __future__ import annotations

import pytest

from llmkit.cli import main


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max_queue", "-1"], "--max_queue >= 0"),
])
def test_bad_flags(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmkit serve: error:") and message in err and err.count("\n") == 1


def test_served_name():
    from llmkit.cli.serve import Args

    assert Args(model="/models/smol.Q8_0.gguf").served_name() == "smol.Q8_0"
    assert Args(model="/ckpt/my-model/").served_name() == "my-model"
    assert Args(model="x", served_model_name="y").served_name() == "y"
