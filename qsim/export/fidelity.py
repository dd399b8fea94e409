"""Fidelity: does qsim's simulation predict what the real TFLite model does?

For a checkpoint, each TFLite mode is exported (:mod:`qsim.export.tflite`)
and run by the interpreter on the clean test split and every shifted set;
qsim runs the matching preset (``MODES``) in its engine on the same inputs.
Per (set, mode) the rows give top-1 agreement between qsim and TFLite, and
the Jaccard overlap between the disagreement sets (samples whose prediction
differs from the float model's) qsim predicts and TFLite produces. With
``study=True`` the int8 model is also run the study's way (uint8 input cast
by truncation, one sample at a time, argmax of the uint8 softmax) to show
that pipeline's artefacts.

Rows are committed per set (:class:`qsim.evaluate.results.ResultsStore`): a
killed run resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

import qsim
from qsim.evaluate.engine import Engine, build_quantizers
from qsim.evaluate.results import ResultsStore
from qsim.evaluate.sweep import load_set, open_checkpoint, read_checkpoint, resolve_sets
from qsim.export.tflite import MODES, TFLiteModel, check_mode, export

SORT_KEYS = ("set_index", "mode")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  """|A & B| / |A | B| of two boolean masks; 1.0 when both are empty."""
  union = int((a | b).sum())
  return 1.0 if union == 0 else int((a & b).sum()) / union


def compare(float_pred: np.ndarray, qsim_pred: np.ndarray, tflite_pred: np.ndarray) -> dict:
  """Agreement of qsim and TFLite, and the overlap of their disagreement sets."""
  dq, dt = qsim_pred != float_pred, tflite_pred != float_pred
  return {
      "n": len(float_pred), "agreement": float(np.mean(qsim_pred == tflite_pred)) if len(float_pred) else float("nan"),
      "jaccard": jaccard(dq, dt), "qsim_disagreements": int(dq.sum()), "tflite_disagreements": int(dt.sum()),
      "both_disagree": int((dq & dt).sum()),
  }


def run_fidelity(
    checkpoint: str,
    workdir: str,
    *,
    modes: Sequence[str] = ("int8", "dynamic", "float16"),
    shifts: Sequence[str] | str = "c",
    limit: int | None = None,
    calib_samples: int = 100,
    batch_size: int = 500,
    seed: int = 0,
    data_dir: str | None = None,
    study: bool = True,
) -> str:
  """Measures qsim vs TFLite for ``checkpoint``; returns the CSV path."""
  modes = [check_mode(m) for m in modes]
  if not modes:
    raise ValueError(f"modes is empty; give some of {list(MODES)}")
  if len(set(modes)) != len(modes):
    raise ValueError(f"modes={list(modes)} lists a mode twice")
  if calib_samples < 1:
    raise ValueError(f"calib_samples={calib_samples} is not valid; give an int >= 1")
  cfg = read_checkpoint(checkpoint)
  sets = resolve_sets(cfg["dataset"], shifts)
  store = ResultsStore(workdir)
  todo = [s for s in sets if not store.has(store.key(s))]
  _log(f"fidelity {checkpoint}: {cfg['model']} on {cfg['dataset']}, modes {modes}: {len(sets)} sets,"
       f" {len(sets) - len(todo)} already done")
  if todo:
    _run(cfg, checkpoint, store, sets, todo, modes, limit=limit, calib_samples=calib_samples,
         batch_size=batch_size, seed=seed, data_dir=data_dir, study=study)
  return store.write_table(SORT_KEYS)


def _run(cfg, checkpoint, store, sets, todo, modes, *, limit, calib_samples, batch_size, seed, data_dir, study):
  model, variables, vocab, calib, kw, text_kw = open_checkpoint(checkpoint, cfg, calib_samples, data_dir)
  t0 = time.time()
  tfl = {}
  os.makedirs(os.path.join(store.workdir, "models"), exist_ok=True)
  for m in modes:
    tfl[m] = TFLiteModel(export(model, variables, m, calib.x[:1], representative=calib.x))
    with open(os.path.join(store.workdir, "models", f"{m}.tflite"), "wb") as f:
      f.write(tfl[m].content)
  study_model = None
  if study and "int8" in modes and np.issubdtype(calib.x.dtype, np.floating):
    study_model = TFLiteModel(export(model, variables, "int8", calib.x[:1], representative=calib.x,
                                     softmax=True, io_type="uint8"))
  _log(f"  exported {modes}{' + study int8 (uint8 io, softmax)' if study_model else ''} in {time.time() - t0:.1f} s")
  engine = Engine(model, variables, build_quantizers(model, variables, [MODES[m] for m in modes], calib.x),
                  batch_size=batch_size)
  for i, name in enumerate(sets):
    if name not in todo:
      continue
    d = load_set(name, cfg["dataset"], seed=seed, limit=limit, vocab=vocab, kw=kw, text_kw=text_kw)
    res = engine.run(d.x, d.y, name)
    rows = []
    for k, m in enumerate(modes):
      tp = tfl[m].predict(d.x, batch_size)
      row = {"set": name, "set_index": f"{i:05d}", "mode": m, "quantizer": MODES[m],
             **compare(res.float_pred, res.quant_pred[k], tp),
             "qsim_accuracy": float(np.mean(res.quant_pred[k] == d.y)),
             "tflite_accuracy": float(np.mean(tp == d.y)), "float_accuracy": float(np.mean(res.float_pred == d.y))}
      if m == "int8" and study_model is not None:
        sp = study_model.predict_study(d.x)
        row.update(study_disagreements=int((sp != res.float_pred).sum()),
                   study_vs_tflite_agreement=float(np.mean(sp == tp)))
      row.update(checkpoint=os.path.abspath(checkpoint), model=cfg["model"], method=cfg["method"],
                 dataset=cfg["dataset"], limit=limit, calib_samples=calib_samples, eval_seed=seed,
                 qsim_version=qsim.__version__, jax_version=jax.__version__)
      rows.append(row)
    store.put(store.key(name), rows)
    worst = min(rows, key=lambda r: r["agreement"])
    _log(f"  [{i + 1}/{len(sets)}] {name}: {len(d.y)} samples; lowest agreement {worst['mode']}"
         f" {worst['agreement']:.4f} (jaccard {worst['jaccard']:.2f})")


def write_report(workdir: str) -> str:
  """``fidelity.md``: per mode, agreement and Jaccard on the clean set and
  over the shifted sets (min and mean), with a plot of both per set."""
  rows = sorted(ResultsStore(workdir).rows(), key=lambda r: (r["set_index"], r["mode"]))
  if not rows:
    raise ValueError(f"no fidelity rows in {workdir!r}; run experiments.fidelity first")
  lines = ["# Fidelity: qsim vs the real TFLite model", "",
           f"Checkpoint `{rows[0]['checkpoint']}` ({rows[0]['model']}, {rows[0]['dataset']}).", "",
           "| mode | qsim preset | clean agreement | clean Jaccard | shifted sets | min agreement | mean agreement"
           " | min Jaccard | mean Jaccard | disagreements qsim / TFLite (all sets) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  modes = list(dict.fromkeys(r["mode"] for r in rows))
  for m in modes:
    rs = [r for r in rows if r["mode"] == m]
    clean = [r for r in rs if r["set"] == "clean"]
    shifted = [r for r in rs if r["set"] != "clean"]
    c = clean[0] if clean else {"agreement": float("nan"), "jaccard": float("nan")}
    ag = [r["agreement"] for r in shifted]
    jc = [r["jaccard"] for r in shifted]
    f = lambda xs, fn: f"{fn(xs):.4f}" if xs else "-"  # noqa: E731
    lines.append(
        f"| {m} | {rs[0]['quantizer']} | {c['agreement']:.4f} | {c['jaccard']:.3f} | {len(shifted)} | "
        f"{f(ag, min)} | {f(ag, np.mean)} | {f(jc, min)} | {f(jc, np.mean)} | "
        f"{sum(r['qsim_disagreements'] for r in rs)} / {sum(r['tflite_disagreements'] for r in rs)} |")
  study = [r for r in rows if r.get("study_disagreements") is not None]
  if study:
    lines += ["", "The study's own way (uint8 input truncated, one sample at a time, argmax of the uint8 softmax)"
              " against the same int8 model run with rounded input and dequantized logits:", "",
              "| set | TFLite disagreements | study-way disagreements | study-way agreement with TFLite |",
              "|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['tflite_disagreements']} | {r['study_disagreements']} |"
              f" {r['study_vs_tflite_agreement']:.4f} |" for r in study]
  if _plot(rows, modes, os.path.join(workdir, "fidelity.png")):
    lines += ["", "![agreement and Jaccard per set](fidelity.png)"]
  path = os.path.join(workdir, "fidelity.md")
  with open(path, "w") as fh:
    fh.write("\n".join(lines) + "\n")
  return path


def _plot(rows, modes, path) -> bool:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
  for m in modes:
    rs = [r for r in rows if r["mode"] == m]
    axes[0].plot([r["agreement"] for r in rs], ".", label=m)
    axes[1].plot([r["jaccard"] for r in rs], ".", label=m)
  for ax, t in zip(axes, ("top-1 agreement qsim vs TFLite", "Jaccard of disagreement sets")):
    ax.set_title(t)
    ax.set_xlabel("set (0 = clean)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
