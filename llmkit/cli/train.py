"""``llmkit train RECIPE.yaml [--field value ...]`` and ``llmkit train --resume OUT_DIR [--max_steps N]``.

The flags are :class:`~llmkit.train.config.TrainConfig`'s fields (nested
``--model_overrides.dim 128``); the positional YAML recipe supplies the same
fields, and flags override it. ``Args`` mirrors ``TrainConfig`` with every
default wrapped in :class:`Unset`, so ``run`` knows exactly which fields the
user gave: a resumed run takes the saved config and checks that nothing
given differs from it (except a larger ``max_steps``), even where the given
value happens to equal the default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import field
from typing import Any

from llmkit.train.config import TrainConfig


class Unset:
    """A default the user did not set; prints as the value it stands for."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


class _RecipeFile(argparse.Action):
    """The positional CONFIG.yaml, handed to the CLI framework as ``--config``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is not None:
            namespace.config = values


POSITIONALS = {"recipe": dict(nargs="?", action=_RecipeFile, metavar="CONFIG.yaml",
                              help="YAML recipe of TrainConfig fields (flags override it)")}


def _make_args() -> type:
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):  # ModelOverrides: every field already defaults to None = unset
            fields.append((f.name, tp, field(default_factory=tp, metadata=f.metadata)))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            fields.append((f.name, tp, field(default=Unset(default), metadata=f.metadata)))
    fields.append(("resume", str, field(default="", metadata={
        "help": "continue the run in this out_dir from its newest checkpoint, with its saved config"})))
    cls = dataclasses.make_dataclass("Args", fields)
    cls.__module__ = __name__
    return cls


Args = _make_args()


def given_fields(args: Any) -> dict[str, Any]:
    """The TrainConfig fields the user set, spelt as ``TrainConfig.to_dict`` does."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if f.name == "model_overrides":
            overrides = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
            if overrides:
                out[f.name] = overrides
        elif not isinstance(value, Unset):
            out[f.name] = value
    return out


def run(args: Any) -> int:
    from llmkit.cli.args import UsageError
    from llmkit.train import Trainer
    from llmkit.train.checkpoint import STATE_FILE, latest_checkpoint
    from llmkit.train.config import check_resume

    given = given_fields(args)
    if args.resume:
        if given.get("out_dir", args.resume) != args.resume:
            raise UsageError(f"--resume {args.resume} and --out_dir {given['out_dir']} disagree; give one")
        path = latest_checkpoint(args.resume)
        if path is None:
            raise UsageError(f"--resume: no checkpoint in {args.resume}/checkpoints")
        try:
            saved = TrainConfig.from_dict(json.loads((path / STATE_FILE).read_text())["train_config"])
        except (json.JSONDecodeError, KeyError) as e:
            raise UsageError(f"--resume: {path / STATE_FILE} is corrupt ({e})") from None
        try:
            cfg = check_resume(saved, {k: v for k, v in given.items() if k != "out_dir"})
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        try:
            cfg = TrainConfig.from_dict(given).validate()
        except ValueError as e:
            raise UsageError(str(e)) from None
    trainer = Trainer(cfg, resume=bool(args.resume))
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if result.interrupted:
        print(f"llmkit train: continue with --resume {cfg.out_dir}")
        return 130
    return 0
