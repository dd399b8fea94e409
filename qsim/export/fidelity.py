"""Fidelity: does qsim's simulation predict what the real runtimes do?

For a checkpoint, each deployment mode is exported, to TFLite
(:mod:`qsim.export.tflite`, ``MODES``) or to ONNX quantized by ONNX Runtime
(:mod:`qsim.export.onnx`, ``ORT_MODES``), and run by that runtime on the
clean test split and every shifted set; qsim runs the matching preset in its
engine on the same inputs. Per (set, mode, kernels) the rows give top-1
agreement between qsim and the runtime, and the Jaccard overlap between the
disagreement sets (samples whose prediction differs from the float model's)
qsim predicts and the runtime produces. With
``study=True`` the int8 model is also run the study's way (uint8 input cast
by truncation, one sample at a time, argmax of the uint8 softmax) to show
that pipeline's artefacts.

Each TFLite model can run on either of the interpreter's kernel families
(``kernels``, :data:`qsim.export.tflite.KERNELS`): ``xnnpack``, the Python
interpreter's default delegate, and ``builtin``, TFLite's built-in kernels
(fixed-point int8 requantization, as TFLite Micro and many NPU paths do);
each ONNX Runtime model on ``mlas`` (the default session: fused integer
kernels) or ``reference`` (graph optimizations off: the QDQ graph as written)
(:data:`qsim.export.onnx.ORT_KERNELS`). A mode runs on the listed kernel
families of its own runtime. A row is one (set, mode, kernels); qsim runs
once per set for all of them.

Rows are committed per (set, kernels) (:class:`qsim.results.ResultsStore`):
a killed run resumes where it stopped, and a run resumed with more kernel
families computes only the missing ones. XNNPACK units keep the set-only key
of runs made before the kernels option, whose rows read as ``xnnpack``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

from qsim import configs
from qsim.evaluate.engine import Engine, build_quantizers
from qsim.results import QuantInfo, ResultsStore, Row, RunInfo, SetInfo
from qsim.evaluate.sweep import load_set, open_run, resolve_sets
from qsim.export.onnx import ORT_KERNELS, ORT_MODES, ORTModel, export_onnx, onnx_modules, ort_preset
from qsim.export.tflite import KERNELS, MODES, TFLiteModel, export, preset_for
from qsim.runs import atomic_write, read_config

SORT_KEYS = ("set_index", "mode", "kernels")
ALL_MODES = (*MODES, *ORT_MODES)
ALL_KERNELS = (*KERNELS, *ORT_KERNELS)


def runtime_of(name: str) -> str:
  """'onnxruntime' for an ONNX Runtime mode or kernel family, else 'tflite'.

  Args:
    name: a deployment mode (``ALL_MODES``) or a kernel family (``ALL_KERNELS``).

  Returns:
    The runtime's name: 'onnxruntime' or 'tflite' (also for unknown names).
  """
  return "onnxruntime" if name in ORT_MODES or name in ORT_KERNELS else "tflite"


def _check_in(valid: Sequence[str], what: str):
  def check(v: str) -> str:
    if v not in valid:
      raise ValueError(f"{what}={v!r} is not valid; choose one of {list(valid)}")
    return v

  return check


LEGACY_KERNELS = "xnnpack"  # what rows written before the kernels option ran on (the interpreter's default)


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  """|A & B| / |A | B| of two boolean masks; 1.0 when both are empty.

  Args:
    a: a boolean mask.
    b: a boolean mask of the same shape.

  Returns:
    The Jaccard index, in [0, 1].
  """
  union = int((a | b).sum())
  return 1.0 if union == 0 else int((a & b).sum()) / union


def compare(float_pred: np.ndarray, qsim_pred: np.ndarray, runtime_pred: np.ndarray) -> dict:
  """Agreement of qsim and the runtime, and the overlap of their disagreement sets.

  A disagreement is a sample whose prediction differs from the float model's.

  Args:
    float_pred: the float model's predicted classes, one per sample.
    qsim_pred: qsim's simulated quantized predictions on the same samples.
    runtime_pred: the runtime's predictions on the same samples.

  Returns:
    'n' (samples), 'agreement' (fraction of samples where qsim and the
    runtime predict the same; NaN without samples), 'jaccard' (of the two
    disagreement sets, :func:`jaccard`), 'qsim_disagreements',
    'runtime_disagreements' and 'both_disagree' (counts).
  """
  dq, dt = qsim_pred != float_pred, runtime_pred != float_pred
  return {
      "n": len(float_pred),
      "agreement": float(np.mean(qsim_pred == runtime_pred)) if len(float_pred) else float("nan"),
      "jaccard": jaccard(dq, dt),
      "qsim_disagreements": int(dq.sum()),
      "runtime_disagreements": int(dt.sum()),
      "both_disagree": int((dq & dt).sum()),
  }


def _checked(values: Sequence[str] | str, check, valid: Sequence[str], what: str, one: str) -> list[str]:
  """``values`` (a name or names) validated by ``check``: non-empty, no name twice."""
  values = [values] if isinstance(values, str) else list(values)
  values = [check(v) for v in values]
  if not values:
    raise ValueError(f"{what} is empty; give some of {list(valid)}")
  if len(set(values)) != len(values):
    raise ValueError(f"{what}={values} lists a {one} twice")
  return values


def unit_key(store: ResultsStore, name: str, kernels: str) -> str:
  """The part-file key of one unit of work, (set ``name``, ``kernels``).

  XNNPACK units keep the set-only key that runs made before the kernels
  option, so those runs' parts count as their XNNPACK units.

  Args:
    store: the run's results store.
    name: the set's name ('clean' or a shifted set's name).
    kernels: the kernel family (``ALL_KERNELS``).

  Returns:
    The key for ``store.get`` / ``store.put``.
  """
  return store.key(name) if kernels == LEGACY_KERNELS else store.key(name, kernels)


def _add_kernels_column(store: ResultsStore) -> None:
  """Rewrites parts written before the kernels option (rows without a
  ``kernels`` value) with ``kernels='xnnpack'``, the kernels they ran on, and
  parts written before ONNX Runtime (``tflite_*`` columns, no ``runtime``)
  with ``runtime='tflite'`` and ``runtime_*`` columns, so results.csv has one
  schema. Parts that have it are untouched."""
  for fname in sorted(os.listdir(store.parts_dir)):
    if not fname.endswith(".json"):
      continue
    try:
      with open(os.path.join(store.parts_dir, fname)) as f:
        rows = json.load(f)
    except ValueError:
      continue  # corrupted: left as is, store.rows() says how to fix it
    if not isinstance(rows, list) or all(not isinstance(r, dict) or {"runtime", "kernels"} <= r.keys() for r in rows):
      continue  # up to date, or corrupted
    store.put(fname[: -len(".json")], [_with_kernels(r) for r in rows])


def _with_kernels(row: dict) -> dict:
  """``row`` with ``runtime`` and ``kernels`` (defaults ``tflite``,
  ``xnnpack``) right after ``mode``, and ``tflite_*`` columns as ``runtime_*``."""
  if not isinstance(row, dict) or {"runtime", "kernels"} <= row.keys():
    return row
  out = {}
  for k, v in row.items():
    if k in ("kernels", "runtime"):
      continue
    out[k.replace("tflite_", "runtime_", 1) if k.startswith("tflite_") else k] = v
    if k == "mode":
      out["runtime"] = row.get("runtime", "tflite")
      out["kernels"] = row.get("kernels", LEGACY_KERNELS)
  out.setdefault("runtime", row.get("runtime", "tflite"))
  out.setdefault("kernels", row.get("kernels", LEGACY_KERNELS))
  return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class FidelityConfig:
  """What a fidelity run compares; checked when built.

  Attributes:
    checkpoints: train workdirs; with several, each runs in ``workdir/<its folder name>``
      (:meth:`workdirs`), so their folder names must differ.
    modes: deployment modes, TFLite's (``MODES``) and ONNX Runtime's (``ORT_MODES``).
    kernels: the kernel families each mode runs on, TFLite's (``KERNELS``:
      xnnpack, builtin) and ONNX Runtime's (``ORT_KERNELS``: mlas, reference);
      each mode's runtime needs at least one.
    shifts: shifted sets besides the clean test split (:func:`qsim.evaluate.sweep.resolve_sets`).
    limit: samples per set (0: all).
    calib_samples: the representative dataset: the first N training samples.
    batch_size: samples per runtime and engine batch.
    seed: seeds the synthetic shifts.
    data_dir: TFDS data folder ('': TFDS's default).
    study: also run the int8 model the study's way (uint8 input truncated,
      one sample at a time; XNNPACK only).
  """

  checkpoints: tuple[str, ...]
  modes: tuple[str, ...] = ("int8", "dynamic", "float16")
  kernels: tuple[str, ...] = ("xnnpack",)
  shifts: tuple[str, ...] = ("c",)
  limit: int = 0
  calib_samples: int = 100
  batch_size: int = 500
  seed: int = 0
  data_dir: str = ""
  study: bool = True

  def __post_init__(self):
    if not self.checkpoints or not all(self.checkpoints):
      raise ValueError(
          f"checkpoint={list(self.checkpoints)} is not valid; give a train workdir, e.g. checkpoint=runs/lenet5"
      )
    labels = [os.path.basename(os.path.normpath(p)) for p in self.checkpoints]
    if len(set(labels)) < len(labels):
      raise ValueError(
          f"checkpoints {list(self.checkpoints)} share a folder name; each runs in workdir/<folder name>, so"
          " give checkpoints with distinct folder names"
      )
    modes = _checked(self.modes, _check_in(ALL_MODES, "mode"), ALL_MODES, "modes", "mode")
    kernels = _checked(self.kernels, _check_in(ALL_KERNELS, "kernels"), ALL_KERNELS, "kernels", "kernel family")
    for rt in {runtime_of(m) for m in modes}:
      if not any(runtime_of(k) == rt for k in kernels):
        raise ValueError(
            f"modes {[m for m in modes if runtime_of(m) == rt]} run on {rt}, but kernels={kernels}"
            f" names none of its kernel families {[k for k in ALL_KERNELS if runtime_of(k) == rt]}"
        )
    if any(runtime_of(m) == "onnxruntime" for m in modes):
      onnx_modules()  # the extra is installed, or an error naming it, before any work
    configs.check_at_least(self, dict(limit=0, calib_samples=1, batch_size=1, seed=0))

  @classmethod
  def from_config_dict(cls, config) -> FidelityConfig:
    """The config of ``experiments/configs/fidelity.py`` (its ``checkpoint`` key holds the checkpoints).

    Args:
      config: the ConfigDict.

    Returns:
      The checked config.

    Raises:
      ValueError: a key that is not valid, a value of the wrong type, or a value that is not valid.
    """
    values = configs.as_dict(config)
    values["checkpoints"] = values.pop("checkpoint", ())
    return configs.from_config_dict(cls, values)

  def workdirs(self, workdir: str) -> dict[str, str]:
    """Where each checkpoint's run goes.

    Args:
      workdir: the run's folder.

    Returns:
      Checkpoint -> its results folder: ``workdir`` itself for one checkpoint,
      ``workdir/<checkpoint folder name>`` for each of several.
    """
    if len(self.checkpoints) == 1:
      return {self.checkpoints[0]: workdir}
    return {p: os.path.join(workdir, os.path.basename(os.path.normpath(p))) for p in self.checkpoints}

  @property
  def run_kernels(self) -> list[str]:
    """The kernel families some mode runs on (the others are dropped)."""
    return [k for k in self.kernels if any(runtime_of(m) == runtime_of(k) for m in self.modes)]


def run_fidelity(c: FidelityConfig, workdir: str) -> dict[str, str]:
  """Measures qsim vs the runtimes for each checkpoint of ``c``.

  Each mode runs on each kernel family of its runtime in ``c.kernels``; the
  study-way comparison (``c.study``) runs on XNNPACK only, as the study did.
  A unit of work is (set, kernels), holding one row per mode of that
  runtime: a resumed run computes the missing units only (a unit already
  stored is not extended by modes added later).

  Args:
    c: what to compare.
    workdir: the results folder (one per checkpoint inside it when there are several, :meth:`FidelityConfig.workdirs`).

  Returns:
    Checkpoint -> the path of its results.csv.

  Raises:
    ValueError: a shifted set that is not a set of a checkpoint's dataset.
    FileNotFoundError: a checkpoint that is not there.
  """
  return {ckpt: _run_checkpoint(c, ckpt, wd) for ckpt, wd in c.workdirs(workdir).items()}


def _run_checkpoint(c: FidelityConfig, checkpoint: str, workdir: str) -> str:
  modes, kernels = list(c.modes), c.run_kernels
  limit, seed, calib_samples = c.limit or None, c.seed, c.calib_samples
  cfg = read_config(checkpoint)
  sets = resolve_sets(cfg["dataset"], c.shifts)
  store = ResultsStore(workdir)
  _add_kernels_column(store)
  todo = {}  # set -> the kernel families it still needs
  stale = 0
  for s in sets:
    missing = []
    for k in kernels:
      done = unit_done(store.get(unit_key(store, s.name, k)), modes, k)
      if done is not True:
        missing.append(k)
        stale += done is False
    if missing:
      todo[s] = missing
  units = len(sets) * len(kernels)
  _log(
      f"fidelity {checkpoint}: {cfg['model']} on {cfg['dataset']}, modes {modes} on kernels {kernels}:"
      f" {len(sets)} sets, {units - sum(map(len, todo.values()))} of {units} (set, kernels) units already done"
      + (f"; {stale} stored units recomputed (other modes or presets than these)" if stale else "")
  )
  if todo:
    _run(
        cfg,
        checkpoint,
        store,
        sets,
        todo,
        modes,
        limit=limit,
        calib_samples=calib_samples,
        batch_size=c.batch_size,
        seed=seed,
        data_dir=c.data_dir or None,
        study=c.study,
    )
  return store.write_table(SORT_KEYS)


def _export_all(model, variables, calib, modes, needed, models_dir) -> dict:
  """(mode, kernels) -> the runtime's model, for each mode on each needed
  kernel family of its runtime; each exported file is kept in ``models_dir``
  (written whole, then renamed)."""
  os.makedirs(models_dir, exist_ok=True)
  out = {}
  for m in modes:
    kerns = [k for k in needed if runtime_of(k) == runtime_of(m)]
    if not kerns:
      continue
    if runtime_of(m) == "onnxruntime":
      content, ext = export_onnx(model, variables, m, calib.x[:1], representative=calib.x), "onnx"
      make = lambda c, k: ORTModel(c, kernels=k)  # noqa: E731
    else:
      content, ext = export(model, variables, m, calib.x[:1], representative=calib.x), "tflite"
      make = lambda c, k: TFLiteModel(c, kernels=k)  # noqa: E731
    atomic_write(os.path.join(models_dir, f"{m}.{ext}"), lambda f, c=content: f.write(c))
    for k in kerns:
      out[m, k] = make(content, k)
  return out


def unit_done(rows: list[dict] | None, modes: Sequence[str], kernels: str) -> bool | None:
  """Whether a stored unit's ``rows`` (None: not stored) are what this run
  would write: one row per mode of ``kernels``' runtime, each simulated by
  today's :func:`preset_of`. False (stale: a run with other modes, or
  before a preset changed) means recompute; the new part replaces it.

  Args:
    rows: the unit's stored rows, or None when it is not stored.
    modes: this run's modes (those of another runtime than ``kernels``' are ignored).
    kernels: the unit's kernel family.

  Returns:
    None when not stored, True when up to date, False when stale.
  """
  if rows is None:
    return None
  want = {m: preset_of(m, kernels) for m in modes if runtime_of(m) == runtime_of(kernels)}
  return {r.get("mode"): r.get("quantizer") for r in rows} == want and len(rows) == len(want)


def preset_of(mode: str, kernels: str) -> str:
  """The qsim preset that simulates ``mode`` on the kernel family ``kernels``.

  Args:
    mode: a deployment mode, TFLite's (``MODES``) or ONNX Runtime's (``ORT_MODES``).
    kernels: a kernel family of the same runtime as ``mode``.

  Returns:
    The qsim preset name.

  Raises:
    ValueError: a TFLite ``mode`` or its ``kernels`` is not valid.
  """
  return ort_preset(mode, kernels) if runtime_of(mode) == "onnxruntime" else preset_for(mode, kernels)


def _run(cfg, checkpoint, store, sets, todo, modes, *, limit, calib_samples, batch_size, seed, data_dir, study):
  run, calib = open_run(checkpoint, cfg, calib_samples, data_dir)
  model, variables = run.model, run.variables
  t0 = time.time()
  needed = [k for k in ALL_KERNELS if any(k in ks for ks in todo.values())]
  tfl = _export_all(model, variables, calib, modes, needed, os.path.join(store.workdir, "models"))
  study_model = None
  if study and "int8" in modes and "xnnpack" in needed and np.issubdtype(calib.x.dtype, np.floating):
    study_model = TFLiteModel(
        export(model, variables, "int8", calib.x[:1], representative=calib.x, softmax=True, io_type="uint8")
    )
  _log(
      f"  exported {modes} for kernels {needed}{' + study int8 (uint8 io, softmax, xnnpack)' if study_model else ''}"
      f" in {time.time() - t0:.1f} s"
  )
  presets = list(
      dict.fromkeys(preset_of(m, k) for m in modes for k in needed if runtime_of(m) == runtime_of(k))
  )  # qsim runs each once
  engine = Engine(model, variables, build_quantizers(model, variables, presets, calib.x), batch_size=batch_size)
  run_info = RunInfo.of(checkpoint, cfg)
  settings = {"eval_seed": seed, "limit": limit, "calib_samples": calib_samples}
  for i, shifted in enumerate(sets):
    if shifted not in todo:
      continue
    name = shifted.name
    d = load_set(run, shifted, seed=seed, limit=limit, data_dir=data_dir)
    res = engine.run(d.x, d.y, name)
    lowest = []
    for kern in todo[shifted]:
      rows = []
      for m in modes:
        if runtime_of(m) != runtime_of(kern):
          continue
        tp = tfl[m, kern].predict(d.x, batch_size)
        j = presets.index(preset_of(m, kern))
        found = {
            **compare(res.float_pred, res.quant_pred[j], tp),
            "qsim_accuracy": float(np.mean(res.quant_pred[j] == d.y)),
            "runtime_accuracy": float(np.mean(tp == d.y)),
            "float_accuracy": float(np.mean(res.float_pred == d.y)),
        }
        if m == "int8" and kern == "xnnpack" and study_model is not None:
          sp = study_model.predict_study(d.x)
          found.update(
              study_disagreements=int((sp != res.float_pred).sum()), study_vs_tflite_agreement=float(np.mean(sp == tp))
          )
        row = Row(
            run=run_info,
            set=SetInfo.of(shifted, i),
            quantizer=QuantInfo.of(engine.quantizers[j].config, j, presets[j]),
            keys={"mode": m, "runtime": runtime_of(m), "kernels": kern},
            metrics=found,
            settings=settings,
        )
        rows.append(row.as_dict())
      store.put(unit_key(store, name, kern), rows)
      worst = min(rows, key=lambda r: r["agreement"])
      lowest.append(f"{worst['mode']}/{kern} {worst['agreement']:.4f} (jaccard {worst['jaccard']:.2f})")
    _log(f"  [{i + 1}/{len(sets)}] {name}: {len(d.y)} samples; lowest agreement {', '.join(lowest)}")


def _kernels(row: dict) -> str:
  return row.get("kernels") or LEGACY_KERNELS


KERNEL_DOC = (
    "Kernels: `xnnpack` is the TFLite interpreter's default (XNNPACK delegate), `builtin` TFLite's built-in"
    " kernels (fixed-point requantization); `mlas` ONNX Runtime's default session (fused integer kernels),"
    " `reference` the QDQ graph run as written (graph optimizations off)."
)


def _sorted_rows(workdir: str) -> list[dict]:
  rows = sorted(
      (_with_kernels(r) for r in ResultsStore(workdir).rows()),
      key=lambda r: (r["set_index"], r["mode"], ALL_KERNELS.index(_kernels(r))),
  )
  if not rows:
    raise ValueError(f"no fidelity rows in {workdir!r}; run experiments.fidelity first")
  return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
  """One dict per (mode, kernels) of a fidelity run's rows, in report order.

  Args:
    rows: a fidelity run's rows (rows written before the kernels option read
      as XNNPACK).

  Returns:
    Per (mode, kernels), sorted by runtime, mode and kernel family: runtime,
    mode, kernels, quantizer (the qsim preset), clean agreement and Jaccard
    (NaN without a clean row), the number of shifted sets, min / mean
    agreement and Jaccard over them (NaN without any), and the disagreements
    of qsim and of the runtime summed over all sets.
  """
  rows = [_with_kernels(r) for r in rows]
  groups = sorted(
      {(r["mode"], _kernels(r)) for r in rows}, key=lambda g: (runtime_of(g[0]), g[0], ALL_KERNELS.index(g[1]))
  )
  out = []
  nan = float("nan")
  for m, k in groups:
    rs = [r for r in rows if r["mode"] == m and _kernels(r) == k]
    clean = [r for r in rs if r["set"] == "clean"]
    ag = [r["agreement"] for r in rs if r["set"] != "clean"]
    jc = [r["jaccard"] for r in rs if r["set"] != "clean"]
    out.append(
        {
            "runtime": runtime_of(m),
            "mode": m,
            "kernels": k,
            "quantizer": rs[0]["quantizer"],
            "clean_agreement": clean[0]["agreement"] if clean else nan,
            "clean_jaccard": clean[0]["jaccard"] if clean else nan,
            "shifted_sets": len(ag),
            "min_agreement": min(ag) if ag else nan,
            "mean_agreement": float(np.mean(ag)) if ag else nan,
            "min_jaccard": min(jc) if jc else nan,
            "mean_jaccard": float(np.mean(jc)) if jc else nan,
            "qsim_disagreements": sum(r["qsim_disagreements"] for r in rs),
            "runtime_disagreements": sum(r["runtime_disagreements"] for r in rs),
        }
    )
  return out


def _summary_line(s: dict, prefix: str = "") -> str:
  f = lambda v, d=4: "-" if np.isnan(v) else f"{v:.{d}f}"  # noqa: E731
  return (
      f"| {prefix}{s['runtime']} | {s['mode']} | {s['kernels']} | {s['quantizer']} | {f(s['clean_agreement'])} |"
      f" {f(s['clean_jaccard'], 3)} | {s['shifted_sets']} | {f(s['min_agreement'])} | {f(s['mean_agreement'])} |"
      f" {f(s['min_jaccard'], 3)} | {f(s['mean_jaccard'], 3)} | {s['qsim_disagreements']} /"
      f" {s['runtime_disagreements']} |"
  )


_SUMMARY_HEADER = (
    "runtime | mode | kernels | qsim preset | clean agreement | clean Jaccard | shifted sets | min agreement"
    " | mean agreement | min Jaccard | mean Jaccard | disagreements qsim / runtime (all sets) |"
)


def write_report(workdir: str) -> str:
  """``fidelity.md``: per (mode, kernels), agreement and Jaccard on the clean
  set and over the shifted sets (min and mean), with a plot of both per set.

  Also lists the study-way comparison where the run has one, and writes the
  plot as ``fidelity.png``.

  Args:
    workdir: a fidelity run's results folder (one checkpoint's).

  Returns:
    The path of ``fidelity.md``.

  Raises:
    ValueError: ``workdir`` holds no fidelity rows, or a part file is corrupted.
  """
  rows = _sorted_rows(workdir)
  lines = [
      "# Fidelity: qsim vs the real runtimes (TFLite, ONNX Runtime)",
      "",
      f"Checkpoint `{rows[0]['checkpoint']}` ({rows[0]['model']}, {rows[0]['dataset']}). {KERNEL_DOC}",
      "",
      "| " + _SUMMARY_HEADER,
      "|---" * 12 + "|",
  ]
  summary = summarize(rows)
  lines += [_summary_line(s) for s in summary]
  study = [r for r in rows if r.get("study_disagreements") is not None]
  if study:
    lines += [
        "",
        "The study's own way (uint8 input truncated, one sample at a time, argmax of the uint8 softmax)"
        " against the same int8 model run with rounded input and dequantized logits, both on XNNPACK:",
        "",
        "| set | TFLite disagreements | study-way disagreements | study-way agreement with TFLite |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['set']} | {r['runtime_disagreements']} | {r['study_disagreements']} |"
        f" {r['study_vs_tflite_agreement']:.4f} |"
        for r in study
    ]
  if _plot(rows, [(s["mode"], s["kernels"]) for s in summary], os.path.join(workdir, "fidelity.png")):
    lines += ["", "![agreement and Jaccard per set](fidelity.png)"]
  path = os.path.join(workdir, "fidelity.md")
  with open(path, "w") as fh:
    fh.write("\n".join(lines) + "\n")
  return path


def write_summary(runs: dict[str, str], out_dir: str) -> str:
  """``out_dir/summary.md`` and ``summary.png`` over several fidelity runs.

  The per (mode, kernels) figures of :func:`summarize` for every run in one
  table, and a heatmap of the lowest agreement over all sets (clean
  included) per run and (mode, kernels).

  Args:
    runs: a label (e.g. the architecture) -> that fidelity run's workdir.
    out_dir: the folder to write into (created if missing).

  Returns:
    The path of ``summary.md``.

  Raises:
    ValueError: ``runs`` is empty, or a run's workdir holds no fidelity rows.
  """
  if not runs:
    raise ValueError("runs is empty; give at least one label -> fidelity workdir")
  per = {label: summarize(_sorted_rows(wd)) for label, wd in runs.items()}
  os.makedirs(out_dir, exist_ok=True)
  lines = [
      "# Fidelity across architectures: qsim vs the real runtimes",
      "",
      KERNEL_DOC + " The plot's lowest agreement is the minimum over the clean set and every shifted set.",
      "",
      "| run (model) | " + _SUMMARY_HEADER,
      "|---" * 13 + "|",
  ]
  for label, summary in per.items():
    model = ResultsStore(runs[label]).rows()[0].get("model", "?")
    lines += [_summary_line(s, prefix=f"{label} ({model}) | ") for s in summary]
  if _heatmap(per, os.path.join(out_dir, "summary.png")):
    lines += ["", "![lowest agreement per run and mode](summary.png)"]
  path = os.path.join(out_dir, "summary.md")
  atomic_write(path, lambda fh: fh.write(("\n".join(lines) + "\n").encode()))
  return path


def _lowest(s: dict) -> float:
  vals = [v for v in (s["clean_agreement"], s["min_agreement"]) if not np.isnan(v)]
  return min(vals) if vals else float("nan")


def _heatmap(per: dict[str, list[dict]], path: str) -> bool:
  """Lowest agreement per run (rows) and (mode/kernels) (columns), annotated."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cols = list(dict.fromkeys(f"{s['mode']}/{s['kernels']}" for summary in per.values() for s in summary))
  grid = np.full((len(per), len(cols)), np.nan)
  for i, summary in enumerate(per.values()):
    for s in summary:
      grid[i, cols.index(f"{s['mode']}/{s['kernels']}")] = _lowest(s)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 2.5), 0.5 * len(per) + 2.2))
  im = ax.imshow(
      grid, vmin=min(0.95, np.nanmin(grid)) if np.isfinite(grid).any() else 0.95, vmax=1.0, cmap="RdYlGn", aspect="auto"
  )
  ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
  ax.set_yticks(range(len(per)), list(per))
  for (i, j), v in np.ndenumerate(grid):
    if np.isfinite(v):
      ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7)
  ax.set_title("lowest top-1 agreement, qsim vs runtime\n(clean and shifted sets)", fontsize=10)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def _plot(rows, groups, path) -> bool:
  """Agreement and Jaccard per set, a series per (mode, kernels) labelled
  'int8/builtin'; XNNPACK as dots, built-in kernels as crosses, ONNX Runtime's
  MLAS and reference kernels as up and down triangles."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
  for m, k in groups:
    rs = [r for r in rows if r["mode"] == m and _kernels(r) == k]
    x = [int(r["set_index"]) for r in rs]
    marker = {"xnnpack": ".", "builtin": "x", "mlas": "^", "reference": "v"}[k]
    axes[0].plot(x, [r["agreement"] for r in rs], marker, linestyle="none", label=f"{m}/{k}")
    axes[1].plot(x, [r["jaccard"] for r in rs], marker, linestyle="none", label=f"{m}/{k}")
  for ax, t in zip(axes, ("top-1 agreement qsim vs runtime", "Jaccard of disagreement sets")):
    ax.set_title(t)
    ax.set_xlabel("set (0 = clean)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
