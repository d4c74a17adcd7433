"""The string-choice check every config dataclass shares.

Components are chosen by strings typed as ``Literal[...]`` (``norm:
NormType = "rmsnorm"``), so the annotation is the one list of allowed values:
the CLI shows it in ``--help`` and rejects other values while parsing, and
:func:`check_choices` rejects them in the library, for configs built in code
or loaded from JSON. It lives at the top of the package, importing nothing
from it, because the model, training, speedrun and fine-tuning configs all
use it.

Errors name the field as the dataclass spells it (``TrainConfig.dtype='int8'``),
never a command-line flag: library code does not know it was called from a CLI.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """``{field: allowed values}`` for the ``Literal``-typed fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)  # resolves string annotations (``from __future__ import annotations``)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is Literal}


def check_choices(cfg: Any, error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming the first ``Literal[...]``-typed field of ``cfg`` whose value is not allowed.

    Args:
        cfg: a dataclass instance.
        error: the exception to raise (a ``ValueError`` subclass such as ``ConfigError``).

    Raises:
        error: e.g. ``TrainConfig.dtype='int8': must be one of fp32, bf16, fp16``.
    """
    for name, allowed in _choices(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise error(f"{type(cfg).__name__}.{name}={value!r}: must be one of {', '.join(map(str, allowed))}")
