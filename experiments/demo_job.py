"""The main job: train a float model on Fashion-MNIST, then count how many
test predictions each quantization config flips (one compiled grid).

Training checkpoints to workdir/train and resumes there: a rerun of a
finished job skips straight to evaluation."""

from __future__ import annotations

import csv
import os
import sys
import time

import jax
import ml_collections
import numpy as np

import qsim
from qsim import models
from qsim import nn as qnn
from qsim import data
from qsim.evaluate import predict_grid
from qsim.quant import preset
from qsim.train import accuracy, train, variables_of

MODELS = {"lenet1": models.lenet1, "lenet5": models.lenet5, "lenet_tiny": models.lenet_tiny}


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _grid_name(w: int, a: int) -> str:
  return f"w{w}" if a == 0 else f"w{w}a{a}"


def build_items(model, params, config, calib_images):
  """The configs to evaluate; static-range configs come calibrated."""
  names = ["float32", *config.presets]
  names += [_grid_name(w, a) for w in config.weight_bits for a in config.act_bits]
  items = []
  for name in names:
    cfg = preset(name)
    qmodel = model.clone(quant=cfg)
    shapes = jax.eval_shape(qmodel.init, jax.random.key(0), calib_images[:1])
    if qnn.QUANT_STATS in shapes:
      stats = qmodel.init(jax.random.key(0), calib_images[:1])[qnn.QUANT_STATS]
      variables = qnn.calibrate(qmodel, {"params": params, qnn.QUANT_STATS: stats}, [calib_images])
      qnn.require_calibrated(variables)
      items.append((cfg, variables[qnn.QUANT_STATS]))
    else:
      items.append(cfg)
  return names, items


def write_csv(path: str, rows: list[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  os.replace(tmp, path)


def plot_heatmap(path: str, config, rows_by_name: dict, n: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  w_bits, a_bits = list(config.weight_bits), list(config.act_bits)
  grid = np.array([[rows_by_name[_grid_name(w, a)]["disagreements"] for a in a_bits] for w in w_bits])
  fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(a_bits), 1.2 + 0.6 * len(w_bits)))
  im = ax.imshow(np.log10(grid + 1), cmap="magma_r", aspect="auto")
  for i in range(len(w_bits)):
    for j in range(len(a_bits)):
      ax.text(j, i, f"{grid[i, j]}", ha="center", va="center",
              color="white" if np.log10(grid[i, j] + 1) > np.log10(grid.max() + 1) * 0.6 else "black")
  ax.set_xticks(range(len(a_bits)), ["float" if a == 0 else str(a) for a in a_bits])
  ax.set_yticks(range(len(w_bits)), [str(w) for w in w_bits])
  ax.set_xlabel("activation bits")
  ax.set_ylabel("weight bits")
  ax.set_title(f"Predictions flipped vs float (of {n})")
  fig.colorbar(im, ax=ax, label="log10(disagreements + 1)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs the job; writes results.csv and disagreement.png into workdir."""
  if config.model not in MODELS:
    raise ValueError(f"model={config.model!r} is not valid; choose one of {list(MODELS)}")
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  fit = data.load("fashion_mnist_debian", "train", val_size=config.val_size)
  val = data.load("fashion_mnist_debian", "val", val_size=config.val_size)
  test = data.load("fashion_mnist_debian", "test", limit=config.test_size or None)
  fit_x, fit_y, test_x, test_y = fit.x, fit.y, test.x, test.y
  model = MODELS[config.model]()
  _log(f"[1/3] training {config.model} (float) for {config.train_steps} steps on {len(fit_x)} images, seed {config.seed}")
  state = train(
      model, fit_x, fit_y, workdir=os.path.join(workdir, "train"), steps=config.train_steps,
      batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed,
      log_every=max(1, config.train_steps // 10), checkpoint_every=config.train_steps)
  params = state.params
  val_acc = accuracy(model, variables_of(state), val.x, val.y)
  _log(f"      validation accuracy {val_acc:.4f}")

  _log(f"[2/3] building configs; static ranges calibrated on the first {config.calib_samples} training images")
  names, items = build_items(model, params, config, fit_x[: config.calib_samples])

  _log(f"[3/3] predicting {len(test_x)} test images under {len(items)} configs (one compiled program)")
  t1 = time.time()
  preds = predict_grid(model, {"params": params}, items, test_x, batch_size=config.eval_batch_size,
                       mapping=config.mapping, progress=True)
  eval_s = time.time() - t1
  ref = preds[0]
  ref_acc = float(np.mean(ref == test_y))
  rows = []
  for name, p in zip(names, preds):
    acc = float(np.mean(p == test_y))
    dis = int(np.sum(p != ref))
    rows.append({
        "model": config.model, "seed": config.seed, "config": name,
        "n": len(test_y), "correct": int(np.sum(p == test_y)), "accuracy": round(acc, 6),
        "accuracy_delta_points": round(100 * (acc - ref_acc), 4),
        "disagreements": dis, "disagreement_rate": round(dis / len(test_y), 6),
        "qsim_version": qsim.__version__, "jax_version": jax.__version__,
    })
  write_csv(os.path.join(workdir, "results.csv"), rows)
  by_name = {r["config"]: r for r in rows}
  plot_heatmap(os.path.join(workdir, "disagreement.png"), config, by_name, len(test_y))

  print(f"\n{config.model} on Fashion-MNIST test ({len(test_y)} images), float accuracy {ref_acc:.4f}")
  print(f"{'config':<18}{'accuracy':>10}{'delta(pts)':>12}{'flipped':>9}{'rate%':>8}")
  for r in rows:
    print(f"{r['config']:<18}{r['accuracy']:>10.4f}{r['accuracy_delta_points']:>12.2f}"
          f"{r['disagreements']:>9d}{100 * r['disagreement_rate']:>8.2f}")
  print(f"\n{len(items)} configs x {len(test_y)} images evaluated in {eval_s:.1f} s; total {time.time() - t0:.0f} s")
  print(f"wrote {os.path.join(workdir, 'results.csv')} and {os.path.join(workdir, 'disagreement.png')}")
  return rows
