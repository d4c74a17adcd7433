"""A command line built from a typed dataclass: one source of truth for names, types and defaults.

Every field ``lr: float = 3e-4`` becomes ``--lr`` (``--max_steps`` and
``--max-steps`` both work; nested dataclass fields become dotted flags such as
``--optim.beta2``). ``--config FILE.yaml`` supplies the same fields; flags
override the file. YAML values are converted to the field's type, so ``3e-4``
is a float even though YAML reads it as a string. Field help comes from
``field(metadata={"help": ...})``. A nested dataclass field marked
``metadata={"flatten": True}`` contributes its fields as top-level flags and
YAML keys (``--temperature`` for ``sampling.temperature``).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class UsageError(ValueError):
    """Bad command-line or config input; the CLI prints it as one line and exits with code 2."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a string/YAML value to the annotated type ``tp``; UsageError naming ``name`` if impossible."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or value is None:
            return None
    origin = get_origin(inner)
    try:
        if origin is Literal:
            choices = get_args(inner)
            if value not in choices:
                raise UsageError(f"--{name}: {value!r} is not one of {', '.join(map(str, choices))}")
            return value
        if origin in (list, tuple):
            (item,) = get_args(inner)[:1] or (str,)
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v != ""]
            return [convert(v, item, name) for v in items]
        if get_origin(inner) in (typing.Union, types.UnionType):  # e.g. int | str: first type that accepts it
            for option in get_args(inner):
                try:
                    return convert(value, option, name)
                except UsageError:
                    continue
            raise UsageError(f"--{name}: cannot interpret {value!r}")
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise UsageError(f"--{name}: expected true/false, got {value!r}")
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if inner is float:
            return float(value)
        if inner in (str, Path):
            return inner(value)
    except UsageError:
        raise
    except (TypeError, ValueError):
        raise UsageError(f"--{name}: expected {getattr(inner, '__name__', inner)}, got {value!r}") from None
    return value


def _fields(cls: type, prefix: str = "") -> dict[str, tuple[dataclasses.Field, Any]]:
    """Flattened ``{dotted_name: (field, type)}``; nested dataclasses expand to ``outer.inner``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_fields(tp, prefix if f.metadata.get("flatten") else f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (f, tp)
    return out


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    values = dict(values)
    for f in dataclasses.fields(cls):  # a flattened field's values sit among this level's
        if f.metadata.get("flatten"):
            inner = {g.name for g in dataclasses.fields(hints[f.name])}
            values[f.name] = {k: values.pop(k) for k in list(values) if k in inner}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(prefix + u for u in unknown)}")
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp, v = hints[f.name], values[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise UsageError(f"{prefix}{f.name}: expected a mapping of {tp.__name__} fields")
            kwargs[f.name] = _build(tp, v, prefix if f.metadata.get("flatten") else f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = convert(v, tp, prefix + f.name)
    return cls(**kwargs)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` (with an underscore and a dash spelling) per field of ``cls``."""
    parser.add_argument("--config", type=str, default=None, help="YAML file with the same fields; flags override it")
    for name, (f, tp) in _fields(cls).items():
        inner, _ = _unwrap_optional(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        if get_origin(inner) is Literal:
            help_text += f" {{{', '.join(map(str, get_args(inner)))}}}"
        spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if "(default" not in help_text:  # a field whose "unset" means something else says so itself
            help_text = f"{help_text} (default: {default})".strip()
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        if inner is bool:
            kw.update(nargs="?", const="true", metavar="BOOL")
        if get_origin(inner) in (list, tuple):  # a list flag may repeat: --lora a=x --lora b=y (or a=x,b=y)
            kw.update(action="append")
        parser.add_argument(*spellings, **kw)


def parse_dataclass(cls: type, namespace: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """Merge defaults < YAML ``--config`` < ``extra`` < flags into an instance of ``cls``."""
    values: dict[str, Any] = {}
    config = getattr(namespace, "config", None)
    if config:
        path = Path(config)
        if not path.exists():
            raise UsageError(f"--config: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"--config: {path} is not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config: {path} must hold a mapping of option names to values")
        for key, value in loaded.items():
            values[key.replace("-", "_")] = value
    for name in _fields(cls):
        if hasattr(namespace, name):
            value = getattr(namespace, name)
            _set(values, name, ",".join(value) if isinstance(value, list) else value)  # repeats of a list flag
    for key, value in (extra or {}).items():
        _set(values, key, value)
    obj = _build(cls, values)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as e:
            raise UsageError(str(e)) from None
    return obj
