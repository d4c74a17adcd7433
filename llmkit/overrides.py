"""Optional-field twins of config dataclasses: "set only what is given, keep the rest".

``optional_fields(ModelConfig, ...)`` is a frozen dataclass with every field of
``ModelConfig`` typed ``T | None`` and defaulting to None, so a YAML recipe or a
command line can name just the fields it changes (``model_overrides`` of
``llmkit train``; the sampling flags of ``llmkit generate``), and the names,
types and help never drift from the original. :func:`given` returns what was set.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any


def optional_fields(cls: type, name: str, doc: str, help_of: Callable[[dataclasses.Field], str],
                    keep: Callable[[dataclasses.Field], bool] = lambda f: True) -> type:
    """A frozen dataclass named ``name`` with every field of dataclass ``cls`` as ``T | None = None``.

    Args:
        cls: the dataclass to mirror.
        name: the new class's name.
        doc: its docstring.
        help_of: the flag help of each mirrored field.
        keep: which fields to mirror (default all).
    """
    hints = typing.get_type_hints(cls)
    fields = [(f.name, hints[f.name] | None, dataclasses.field(default=None, metadata={"help": help_of(f)}))
              for f in dataclasses.fields(cls) if keep(f)]

    def __repr__(self) -> str:  # only what is set
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in given(self).items())})"

    out = dataclasses.make_dataclass(name, fields, frozen=True, namespace={"__repr__": __repr__})
    out.__doc__ = doc
    return out


def given(overrides: Any) -> dict[str, Any]:
    """The fields of an :func:`optional_fields` instance that are set (not None)."""
    return {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
