"""Typed configuration: YAML files -> frozen dataclasses, with strict validation.

Every module that takes settings declares them as a frozen dataclass deriving from :class:`ConfigNode`
(``jtd3.agent.config.AgentConfig``, ``jtd3.backends.sim.config.SimConfig``, ...). This module holds the machinery:

- :func:`from_dict` builds a dataclass from a plain mapping. Unknown keys, wrong types and values outside a
  field's ``choices`` raise :class:`ConfigError` naming the dotted key, the bad value and what is allowed.
- :func:`to_dict` is the inverse (used to save the resolved config of a run).
- :func:`apply_overrides` applies ``key.sub=value`` strings (the CLI's ``--set``) to a nested mapping; a key
  path that does not exist is an error, values are parsed as YAML scalars.
- :func:`track_reads` records which fields the code actually reads, so a test can prove that every key of
  the config reaches the code (the original project had many YAML keys nothing read).

Declare a string enum with ``choice(default, ("a", "b"))`` and a documented field with
``param(default, "doc")``; range checks belong in ``__post_init__`` and should raise :class:`ConfigError`
via :func:`check`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "ConfigNode",
    "apply_overrides",
    "check",
    "choice",
    "from_dict",
    "leaf_keys",
    "load_yaml",
    "param",
    "to_dict",
    "track_reads",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the dotted key."""


# ----------------------------------------------------------------------------------------------------------
# Read tracking

_READS: set[tuple[str, str]] | None = None
_UNCOUNTED_FILES = (__file__, dataclasses.__file__)


class ConfigNode:
    """Base class for config dataclasses: records field reads while :func:`track_reads` is active.

    Reads made by dataclass-generated methods (``__eq__``, ``__hash__``, ``__repr__``: their code lives in
    ``<string>``), by the ``dataclasses`` module itself (``replace`` copies every field), by validation in
    ``__post_init__`` and by this module (serialisation) are not counted, so hashing a config for ``jax.jit``'s
    static arguments, copying it or saving it does not count as the code using it. Outside
    :func:`track_reads` attribute access is plain (the recording hook is installed only while tracking).
    """


def _recording_getattribute(self: ConfigNode, name: str) -> Any:
    value = object.__getattribute__(self, name)
    if _READS is not None and not name.startswith("_"):
        fields = object.__getattribute__(self, "__dataclass_fields__")
        if name in fields:
            code = sys._getframe(1).f_code
            caller = code.co_filename
            if (not caller.startswith("<") and caller not in _UNCOUNTED_FILES
                    and code.co_name != "__post_init__"):
                _READS.add((type(self).__qualname__, name))
    return value


@contextlib.contextmanager
def track_reads() -> Iterator[set[tuple[str, str]]]:
    """Yield a set that fills with ``(ClassName, field)`` for every config field the code reads.

    Installs the recording ``__getattribute__`` on :class:`ConfigNode` (and so on every config class) for the
    duration; nested calls share it and the outermost one removes it.
    """
    global _READS
    previous = _READS
    _READS = set()
    if previous is None:
        ConfigNode.__getattribute__ = _recording_getattribute  # type: ignore[method-assign]
    try:
        yield _READS
    finally:
        _READS = previous
        if previous is None:
            del ConfigNode.__getattribute__


def leaf_keys(cls: type, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Map every dotted leaf key of config class ``cls`` to its ``(ClassName, field)`` pair."""
    out: dict[str, tuple[str, str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, key + "."))
        else:
            out[key] = (cls.__qualname__, f.name)
    return out


# ----------------------------------------------------------------------------------------------------------
# Field helpers


def param(default: Any, doc: str = "", **metadata: Any) -> Any:
    """A dataclass field with a default and a documentation string (shown in error messages)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) default for sequence fields")
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


def choice(default: str, choices: Sequence[str], doc: str = "") -> Any:
    """A string field restricted to ``choices``."""
    if default not in choices:
        raise TypeError(f"default {default!r} is not one of {tuple(choices)}")
    return dataclasses.field(default=default, metadata={"doc": doc, "choices": tuple(choices)})


def nested(cls: type) -> Any:
    """A nested config section with its class defaults."""
    return dataclasses.field(default_factory=cls)


def check(condition: bool, key: str, value: Any, requirement: str) -> None:
    """Raise :class:`ConfigError` ``"<key> = <value>: must be <requirement>"`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"config key '{key}' = {value!r}: must be {requirement}")


# ----------------------------------------------------------------------------------------------------------
# Building and serialising


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, meta)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}' = {value!r}: expected {_type_name(tp)}")

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping (section {tp.__name__}), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")

    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"config key '{key}' = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", {}) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}' = {value!r}: expected a list of {len(args)} values")
        return tuple(_convert(v, a, f"{key}[{i}]", {}) for i, (a, v) in enumerate(zip(args, value)))

    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' = {value!r}: expected a number")
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"config key '{key}' = {value!r}: expected a number") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' = {value!r}: expected a string")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r}: must be one of {', '.join(map(repr, choices))}")
        return value
    raise TypeError(f"config key '{key}': unsupported field type {tp!r}")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build config dataclass ``cls`` from ``data``; missing keys take the class defaults.

    Raises :class:`ConfigError` for unknown keys (listing the valid ones), wrong types and invalid choices.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)} in {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], prefix + name, fields[name].metadata)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain (YAML-safe) nested dict of a config dataclass; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(object.__getattribute__(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------
# YAML and overrides


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of two nested mappings; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Apply ``"a.b=value"`` overrides to nested mapping ``data``; values are parsed as YAML.

    With ``cls`` given, the key path is checked against the config class (so a typo fails even when the key
    is absent from ``data``).
    """
    out = merge({}, data)
    valid = leaf_keys(cls) if cls is not None else None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if valid is not None and key not in valid:
            close = [k for k in valid if k.endswith("." + key.split(".")[-1]) or k == key.split(".")[-1]]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{key}' in override {item!r}{hint}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node[p] = dict(child)
            node = node[p]
        node[parts[-1]] = value
    return out


def yaml_value(value: Any) -> str:
    """One-line YAML for a scalar or a flat list (the form ``--set key=value`` accepts too)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def commented_yaml(obj: Any, indent: int = 0) -> str:
    """YAML text of config ``obj`` with each field's ``doc`` (and choices) as a comment above it."""
    lines: list[str] = []
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        doc = f.metadata.get("doc", "")
        choices = f.metadata.get("choices")
        if choices:
            doc = f"{doc} [{' | '.join(choices)}]".strip()
        if doc:
            lines.extend(textwrap.wrap(doc, width=112, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# "))
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(commented_yaml(value, indent + 2))
            continue
        lines.append(f"{pad}{f.name}: {yaml_value(to_dict(value))}")
    return "\n".join(lines)
