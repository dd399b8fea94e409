"""Typed job configs from ``ml_collections`` ConfigDicts.

Every library entry point (training, sweeps, retraining, fidelity, the
study) takes one frozen config dataclass. Config files stay plain data (a
ConfigDict of strings, numbers, booleans and tuples); :func:`from_config_dict`
turns one into its dataclass, checking every key and the type of every value
against the dataclass's fields, and the dataclass's own ``__post_init__``
checks the values. A user error names the key, the bad value and what is
valid, in one ``ValueError`` (the launchers print it as one line and exit
with status 2).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

_NAMES = {str: "a string", int: "an int", float: "a number", bool: "a boolean (true/false)", type(None): "None"}


def _describe(tp) -> str:
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_describe(a) for a in args)
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis:
      return f"a tuple of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s (on the command line: a+b+c)"
    return f"a tuple of {len(args)} values"
  return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _check(tp, value) -> tuple[bool, Any]:
  """(whether ``value`` is of type ``tp``, the value converted: lists to
  tuples, ints to floats where a float is asked for)."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if tp is Any:
    return True, value
  if origin in (typing.Union, types.UnionType):
    for a in args:
      ok, v = _check(a, value)
      if ok:
        return True, v
    return False, value
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False, value
    items = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(value)
    if len(items) != len(value):
      return False, value
    out = []
    for a, v in zip(items, value):
      ok, v = _check(a, v)
      if not ok:
        return False, value
      out.append(v)
    return True, tuple(out)
  if tp is type(None):
    return value is None, value
  if tp is bool:
    return isinstance(value, bool), value
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool), value
  if tp is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok, float(value) if ok else value
  return isinstance(value, tp), value


def as_dict(config: Mapping[str, Any] | Any) -> dict[str, Any]:
  """A ConfigDict (or a mapping) as a plain dict.

  Args:
    config: an ``ml_collections.ConfigDict`` or a mapping.

  Returns:
    A new dict of its keys and values.
  """
  return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def check_at_least(config, bounds: Mapping[str, int]) -> None:
  """Checks that each named int field of ``config`` is at least its bound.

  Args:
    config: a config dataclass.
    bounds: field name -> the smallest valid value.

  Raises:
    ValueError: naming the first field below its bound and the valid range.
  """
  for name, lo in bounds.items():
    if getattr(config, name) < lo:
      raise ValueError(f"{name}={getattr(config, name)} is not valid; give an int >= {lo}")


def from_config_dict(cls: type[T], config: Mapping[str, Any] | Any, **overrides) -> T:
  """The dataclass ``cls`` built from ``config``, every key and type checked.

  Args:
    cls: a dataclass whose fields are annotated with ``str``, ``int``,
      ``float``, ``bool``, ``tuple[X, ...]``, fixed-length tuples or unions
      of these (``int | None``).
    config: an ``ml_collections.ConfigDict`` (or a mapping) with a key per
      field; fields with a default may be left out.
    **overrides: values that replace (or add) keys of ``config``, computed by
      the caller from other keys.

  Returns:
    ``cls(**values)``; the dataclass's ``__post_init__`` then checks the values themselves.

  Raises:
    ValueError: a key that is not a field (the message lists the valid
      ones), a field without a default that is missing, or a value of the
      wrong type (the message names the key, the value and the type asked for).
  """
  values = as_dict(config)
  values.update(overrides)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"config keys {unknown} are not valid for {cls.__name__}; valid keys are {sorted(fields)}")
  missing = [
      n
      for n, f in fields.items()
      if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  ]
  if missing:
    raise ValueError(f"config has no {missing}; {cls.__name__} needs them")
  hints = typing.get_type_hints(cls)
  for name, value in values.items():
    ok, converted = _check(hints[name], value)
    if not ok:
      raise ValueError(f"{name}={value!r} is not valid; give {_describe(hints[name])}")
    values[name] = converted
  return cls(**values)


class FromConfigDict:
  """A dataclass mixin: ``Cls.from_config_dict(config)`` builds it with :func:`from_config_dict`."""

  @classmethod
  def from_config_dict(cls, config, **overrides):
    """The config built from a ConfigDict (a config file's values).

    Args:
      config: the ConfigDict (or a mapping), a key per field.
      **overrides: fields to replace.

    Returns:
      The checked config.

    Raises:
      ValueError: a key that is not a field, a value of the wrong type, or a value that is not valid.
    """
    return from_config_dict(cls, config, **overrides)
