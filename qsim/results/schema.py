"""The one row schema of every results table qsim writes.

A row is a :class:`Row`: who was measured (:class:`RunInfo`, the trained
checkpoint), on what (:class:`SetInfo`, the clean split or a shifted set, by
its family, shift and severity), under which quantizer (:class:`QuantInfo`,
the config's own fields: weight and activation formats and bits), the
producer's own keys (a retraining strategy and round, a runtime mode), the
metrics, the evaluation's settings and the environment. Sweeps, retraining,
fidelity runs and the study build their rows here, so the columns they share
have one name, one meaning and one order; reports read those fields and never
parse names back. :meth:`Row.as_dict` gives the flat row the store writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import jax

import qsim
from qsim.quant import QuantConfig, preset
from qsim.quant.spec import BF16, FP8_E4M3, FP8_E5M2, FP16, INT

FLOAT = "float"  # the format column of a tensor that stays float (float32)
FLOAT_WIDTH = {FP16: 16, BF16: 16, FP8_E4M3: 8, FP8_E5M2: 8}  # the bits column of a float format


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunInfo:
  """The trained checkpoint a row measures.

  Attributes:
    checkpoint: the run directory, as an absolute path.
    model: the model's registry name.
    method: its training method (standard, qat, pgd, fgsm, mixup).
    dataset: the dataset it was trained on.
    train_seed: its training seed (None: not recorded).
  """

  checkpoint: str
  model: str
  method: str
  dataset: str
  train_seed: int | None = None

  @classmethod
  def of(cls, path: str, config: Mapping[str, Any]) -> RunInfo:
    """The run at ``path`` with its saved training config.

    Args:
      path: the run directory (made absolute here).
      config: its ``config.json`` as a dict (``model``, ``method``, ``dataset``, ``seed``).

    Returns:
      The run's row fields.
    """
    return cls(
        checkpoint=os.path.abspath(path),
        model=config["model"],
        method=config["method"],
        dataset=config["dataset"],
        train_seed=config.get("seed"),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SetInfo:
  """The data a row was measured on.

  Attributes:
    set: the set's name ('clean' for the clean split, 'pool' for a retraining pool,
      else a shifted set's full name, 'fashion_mnist/c/fog/3').
    index: its position in the run's list of sets (orders the table); None: not in that list.
    family: 'clean', 'pool', or the shifted set's family ('c', 'official_c', 'natural', 'text').
    shift: the corruption, text shift or natural set ('' for the clean split).
    severity: the corruption's severity (None where a set has none).
  """

  set: str
  index: int | None = None
  family: str
  shift: str = ""
  severity: int | None = None

  @classmethod
  def of(cls, shifted, index: int | None = None) -> SetInfo:
    """The fields of a set object (:class:`qsim.shifts.ShiftedSet`, the clean split included).

    Args:
      shifted: an object with ``name``, ``family``, ``shift`` and ``severity``.
      index: its position in the run's list of sets.

    Returns:
      The set's row fields.
    """
    return cls(set=shifted.name, index=index, family=shifted.family, shift=shifted.shift, severity=shifted.severity)


def _tensor(spec) -> tuple[str, int | None]:
  """(format, bits) of a tensor spec: an integer grid's bits, a float format's width, None for float32."""
  if spec is None:
    return FLOAT, None
  return spec.format, int(spec.bits) if spec.format == INT else FLOAT_WIDTH[spec.format]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantInfo:
  """The quantizer a row measures, by its config's own fields.

  The formats and bits are those of the config's default layer spec (a
  rule-based mixed config is described by its name; its per-layer specs are
  in the config itself).

  Attributes:
    quantizer: the config's name (a preset name such as 'tflite_int8' or 'w4a4').
    index: its position in the run's list of quantizers (orders the table); None: not in a list.
    weight_format: 'int', a float format ('fp16', 'bf16', 'fp8_e4m3', ...) or 'float' (not quantized).
    weight_bits: the weights' bits (a float format's width; None: float32).
    act_format: the same for the layers' input activations.
    act_bits: the activations' bits (a float format's width; None: float32).
  """

  quantizer: str
  index: int | None = None
  weight_format: str = FLOAT
  weight_bits: int | None = None
  act_format: str = FLOAT
  act_bits: int | None = None

  @classmethod
  def of(cls, config: QuantConfig, index: int | None = None, name: str | None = None) -> QuantInfo:
    """The row fields of ``config``.

    Args:
      config: the quantizer's config.
      index: its position in the run's list of quantizers.
      name: the label to use (default: ``config.name``).

    Returns:
      The quantizer's row fields.
    """
    spec = config.default
    wf, wb = _tensor(spec.weight if spec is not None else None)
    af, ab = _tensor(spec.act if spec is not None else None)
    return cls(
        quantizer=config.name if name is None else name,
        index=index,
        weight_format=wf,
        weight_bits=wb,
        act_format=af,
        act_bits=ab,
    )

  @classmethod
  def of_preset(cls, name: str, index: int | None = None) -> QuantInfo:
    """The row fields of the preset called ``name`` (:func:`qsim.quant.preset`).

    Args:
      name: a preset name ('tflite_int8', 'w4a4', ...).
      index: its position in the run's list of quantizers.

    Returns:
      The quantizer's row fields.

    Raises:
      ValueError: ``name`` is not a preset (the message lists the valid ones).
    """
    return cls.of(preset(name), index, name)


def environment() -> dict[str, Any]:
  """The software and devices a row was computed with.

  Returns:
    ``qsim_version``, ``jax_version``, ``backend``, ``devices`` and ``processes``.
  """
  return {
      "qsim_version": qsim.__version__,
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "processes": jax.process_count(),
  }


def _index(i: int | None, width: int) -> str | None:
  return None if i is None else f"{i:0{width}d}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
  """One results row.

  Attributes:
    run: the checkpoint measured.
    set: the data it was measured on (None: a row about no one set).
    quantizer: the quantizer (None: a row about no one quantizer).
    keys: the producer's own identity fields, e.g. a retraining strategy,
      seed and round, or a runtime mode and its kernels.
    metrics: the measured values.
    settings: the evaluation's settings (seeds, sample limits, calibration size).
  """

  run: RunInfo
  set: SetInfo | None = None
  quantizer: QuantInfo | None = None
  keys: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict[str, Any]:
    """The flat row: run, set, quantizer, keys, metrics, settings, environment, in that order.

    Returns:
      Column name -> value. Indices are zero-padded strings ('00003') so the
      table sorts as text; a field named twice raises ``ValueError``.
    """
    r = self.run
    out: dict[str, Any] = {
        "checkpoint": r.checkpoint,
        "model": r.model,
        "method": r.method,
        "train_seed": r.train_seed,
        "dataset": r.dataset,
    }
    if self.set is not None:
      s = self.set
      out.update(set=s.set, set_index=_index(s.index, 5), family=s.family, shift=s.shift, severity=s.severity)
    if self.quantizer is not None:
      q = self.quantizer
      out.update(
          quantizer=q.quantizer,
          quantizer_index=_index(q.index, 3),
          weight_format=q.weight_format,
          weight_bits=q.weight_bits,
          act_format=q.act_format,
          act_bits=q.act_bits,
      )
    for part in (self.keys, self.metrics, self.settings, environment()):
      twice = sorted(set(part) & set(out))
      if twice:
        raise ValueError(f"results row fields {twice} are given twice")
      out.update(part)
    return out


def set_label(row: Mapping[str, Any]) -> str:
  """A set's short label from a row's fields: 'clean', or family/shift[/severity] ('c/fog/3').

  Args:
    row: a results row (as built, or read back from a table, where numbers are floats and blanks NaN).

  Returns:
    The label (the set's name without its dataset).
  """
  family, shift, severity = row["family"], row.get("shift"), row.get("severity")
  if family in ("clean", "pool") or not shift or not isinstance(shift, str):
    return family
  has_severity = severity is not None and not (isinstance(severity, float) and math.isnan(severity))
  return f"{family}/{shift}/{int(severity)}" if has_severity else f"{family}/{shift}"


QUANT_FIELDS = ("weight_format", "weight_bits", "act_format", "act_bits")


def with_quant_fields(row: dict) -> dict:
  """``row`` with the quantizer's fields filled in from its preset name when
  it was written before rows carried them (qsim 0.x tables); other rows as
  they are.

  Args:
    row: a row read back from a results table.

  Returns:
    The row (a new dict when fields were added).
  """
  if all(k in row for k in QUANT_FIELDS) or not isinstance(row.get("quantizer"), str):
    return row
  q = QuantInfo.of_preset(row["quantizer"])
  return {**row, **{k: getattr(q, k) for k in QUANT_FIELDS}}
