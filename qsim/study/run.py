"""The study end to end, resumably: train every (model, method, seed), evaluate
the study's quantizers and a bit-width grid on clean and shifted data, run the
retraining loop, write the report answering RQ1-RQ4.

Layout of ``workdir``::

  train/<model>/<method>/seed<s>/   training workdirs (checkpoints, summary.json)
  eval/                             the sweep over every checkpoint (results.csv, samples/)
  retrain/<model>/seed<s>/          the retraining runs on each standard checkpoint
  report.md, *.png                  the study report
  study_config.json                 the setting this workdir holds (a rerun with another is refused)
  timings.json                      wall time per stage, summed over the processes that ran the study

Each stage skips what is already done (a training run with its summary.json,
a sweep unit with its part file, a retraining round with its part file), so
rerunning the same command after a crash resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

from qsim import configs
from qsim import runs
from qsim.evaluate import sweep
from qsim.quant import presets
from qsim.retrain import RetrainConfig, run_retrain
from qsim.train import job
from qsim.train.methods import METHODS

STUDY_METHODS = ("standard", "qat", "pgd", "mixup")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class StudyConfig(configs.FromConfigDict):
  """What the study runs; see ``experiments/configs/study.py``."""

  models: tuple[str, ...]
  dataset: str = "fashion_mnist_debian"
  data_dir: str = ""  # the dataset's folder ('' = its default); training runs record it, the sweep reads theirs
  methods: tuple[str, ...] = STUDY_METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  quantizers: tuple[str, ...] = ("tflite_int8", "tflite_dynamic", "weight_only_int8", "fp16")
  bits: tuple[int, ...] = (2, 4, 6, 8)  # the wNaN grid evaluated besides the presets
  shifts: tuple[str, ...] = ("c",)
  severities: tuple[int, ...] = (1, 2, 3, 4, 5)
  limit: int = 0  # test samples per set (0 = all)
  shift_limit: int = 0  # samples per shifted set (0 = limit)
  eval_batch_size: int = 500
  calib_samples: int = 100
  retrain_quantizers: tuple[str, ...] = ("tflite_int8", "w4a4")
  retrain_strategies: tuple[str, ...] = ("all", "margin", "random")
  retrain_rounds: int = 1
  retrain_epochs: float = 1.0
  retrain_pool: str = "val"
  retrain_eval_split: str = "test"
  retrain_shift_limit: int = 1000
  # training: each model's own config with these overrides (0: that config's value)
  train_steps: int = 0
  batch_size: int = 0
  train_limit: int = 0
  val_size: int = 0
  qat_steps: int = 1000  # QAT fine-tunes the standard checkpoint
  qat_quant: str = "w8a8"
  qat_learning_rate: float = 1e-4
  pgd_iters: int = 0
  pgd_from_standard: bool = False  # PGD fine-tunes the standard checkpoint (pgd_steps steps) instead of from scratch
  pgd_steps: int = 0  # with pgd_from_standard: its steps (0: the model's own)
  mixup_from_standard: bool = (
      False  # Mixup fine-tunes the standard checkpoint (mixup_steps steps) instead of from scratch
  )
  mixup_steps: int = 0  # with mixup_from_standard: its steps (0: the model's own)
  train_workers: int = 1  # training runs at once, each in its own process pinned to its share of the CPU cores

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks every field before any work.

    Raises:
      ValueError: naming the field, the bad value and the valid range.
    """
    if not self.models:
      raise ValueError("no models given; e.g. models=lenet1+lenet5+gru_rows")
    bad = [m for m in self.methods if m not in METHODS]
    if bad or not self.methods:
      raise ValueError(f"methods={list(self.methods)} is not valid; choose from {list(METHODS)}")
    if "qat" in self.methods and "standard" not in self.methods:
      raise ValueError("method 'qat' fine-tunes the 'standard' checkpoint; add 'standard' to methods")
    for method in ("pgd", "mixup"):
      if getattr(self, f"{method}_from_standard") and method in self.methods and "standard" not in self.methods:
        raise ValueError(f"{method}_from_standard fine-tunes the 'standard' checkpoint; add 'standard' to methods")
      steps = getattr(self, f"{method}_steps")
      if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{method}_steps={steps!r} is not valid; give an int >= 0 (0: the model's own)")
    if isinstance(self.train_workers, bool) or not isinstance(self.train_workers, int) or self.train_workers < 1:
      raise ValueError(f"train_workers={self.train_workers!r} is not valid; give an int >= 1")
    if "qat" in self.methods:
      job.qat_config(self.qat_quant)
    if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
      raise ValueError(f"seeds={list(self.seeds)} is not valid; give ints >= 0")
    if any(not 2 <= b <= 16 for b in self.bits):
      raise ValueError(f"bits={list(self.bits)} is not valid; give ints in 2..16")
    if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
      raise ValueError(f"severities={list(self.severities)} is not valid; give ints in 1..5")
    for q in self.quantizers:
      presets.preset(q)
    if self.retrain_quantizers:
      self.retrain_config("<each standard run>", ())  # checked when built
    if not self.shift_names():
      raise ValueError(f"shifts={list(self.shifts)} with severities={list(self.severities)} selects no shifted set")

  @property
  def all_quantizers(self) -> list[str]:
    """The wNaN grid, then the presets."""
    grid = [presets.bits_name(b, b) for b in self.bits]
    return grid + [q for q in self.quantizers if q not in grid]

  def retrain_config(self, checkpoint: str, shifts: tuple[str, ...], seed: int = 0) -> RetrainConfig:
    """The retraining config of one standard checkpoint, from the ``retrain_*`` fields.

    Args:
      checkpoint: the standard run's training workdir.
      shifts: the shifted sets re-measured after retraining (full names, as
        :meth:`shift_names` gives them).
      seed: the retraining seed (the checkpoint's training seed in the study).

    Returns:
      The retraining config.

    Raises:
      ValueError: a ``retrain_*`` field is not valid.
    """
    return RetrainConfig(
        checkpoint=checkpoint,
        quantizers=self.retrain_quantizers,
        strategies=self.retrain_strategies,
        seeds=(seed,),
        rounds=self.retrain_rounds,
        shifts=shifts,
        shift_limit=self.retrain_shift_limit,
        epochs=self.retrain_epochs,
        calib_samples=self.calib_samples,
        pool=self.retrain_pool,
        eval_split=self.retrain_eval_split,
        eval_batch_size=self.eval_batch_size,
        data_dir=self.data_dir,
    )

  def shift_names(self) -> list[str]:
    """The shifted sets: ``shifts`` resolved, keeping the listed severities.

    Returns:
      The shifted sets' full names (e.g. 'fashion_mnist_debian/c/fog/1'); sets without
      a severity are always kept.
    """
    shifted = sweep.resolve_sets(self.dataset, list(self.shifts))[1:]
    return [s.name for s in shifted if s.severity in (None, *self.severities)]


def train_dir(workdir: str, model: str, method: str, seed: int) -> str:
  """The training workdir of one (model, method, seed) inside a study workdir.

  Args:
    workdir: the study workdir.
    model: the model name.
    method: the training method.
    seed: the training seed.

  Returns:
    ``<workdir>/train/<model>/<method>/seed<seed>``.
  """
  return os.path.join(workdir, "train", model, method, f"seed{seed}")


STUDY_CONFIG = "study_config.json"
TIMINGS = "timings.json"
STAGES = ("train", "evaluate", "retrain", "report")


def read_timings(workdir: str) -> dict:
  """The wall time each stage of a study has taken, summed over the processes that ran it.

  Args:
    workdir: the study workdir.

  Returns:
    ``{'seconds': {stage: s}, 'processes': n, 'cpus': [...]}`` (zeros before the first run); ``cpus`` lists
    each process's CPU count (a resumed study may have run on several machines).
  """
  path = os.path.join(workdir, TIMINGS)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"seconds": {s: 0.0 for s in STAGES}, "processes": 0, "cpus": []}


class _StageClock:
  """Adds each stage's wall time to ``timings.json`` as it ends, and the training stage's after each run: a
  killed process loses the time since its last finished run or stage."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.t = read_timings(workdir)
    self.t["processes"] += 1
    self.t["cpus"].append(len(os.sched_getaffinity(0)))
    self.start = time.time()

  def done(self, stage: str) -> None:
    now = time.time()
    self.t["seconds"][stage] = round(self.t["seconds"][stage] + now - self.start, 1)
    self.start = now
    runs.write_json(os.path.join(self.workdir, TIMINGS), self.t)


# How the work is spread, not what it computes: a rerun may change these. (Trained weights do depend on the
# cores a training process runs on, in their last bits, as they depend on the machine; a resumed study may mix
# runs trained on different machines or worker counts, and each run is reproducible on its own settings.)
SCHEDULING_KEYS = ("train_workers",)


def _pin_worker(counter, shares: list[list[int]]) -> None:
  """A training worker's initializer: the next share of the CPU cores; it dies with the study process."""
  import ctypes  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  try:  # Linux: SIGKILL when the parent dies, so no orphan trains on after a killed study
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass
  with counter.get_lock():
    i = counter.value
    counter.value += 1
  os.sched_setaffinity(0, shares[i % len(shares)])  # before the first JAX computation sizes its thread pool


def _train_all(
    jobs: list[tuple[str, job.TrainConfig, str]], workers: int, t0: float, tick: Callable[[], None] = lambda: None
) -> None:
  """Runs ``job.run(config, workdir)`` for every (label, config, workdir): here, or ``workers`` at a time.

  ``tick()`` is called after each finished run.

  Each worker is a fresh process pinned to its share of the CPU cores (measured on the 2-core CPU: two
  single-core LeNet-5 trainings do 1.45x the steps of one on both cores; BUILD_NOTES "The study").
  """
  if workers <= 1 or len(jobs) <= 1:
    for label, c, d in jobs:
      _log(f"[study] train {label} ({time.time() - t0:.0f} s)")
      job.run(c, d)
      tick()
    return
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top

  ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked JAX runtime
  cpus = sorted(os.sched_getaffinity(0))
  workers = min(workers, len(jobs), len(cpus))
  shares = [cpus[i::workers] for i in range(workers)]
  counter = ctx.Value("i", 0)
  _log(f"[study] training {len(jobs)} runs, {workers} at a time on CPU cores {shares} ({time.time() - t0:.0f} s)")
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_pin_worker, initargs=(counter, shares)
  ) as pool:
    futures = {pool.submit(job.run, c, d): label for label, c, d in jobs}
    try:
      for f in concurrent.futures.as_completed(futures):
        f.result()
        tick()
        _log(f"[study] trained {futures[f]} ({time.time() - t0:.0f} s)")
    except BaseException:  # the first failure stops the study (runs not started are cancelled); finished runs stay
      for f in futures:
        f.cancel()
      raise


def claim_workdir(cfg: StudyConfig, workdir: str) -> None:
  """Records ``cfg`` in ``workdir``, or checks that it equals the config already there.

  A study workdir holds one setting: a rerun with the same config resumes it;
  a different config would mix two settings in one table, so it is refused
  before any work. ``SCHEDULING_KEYS`` (how many runs train at once) may
  change between reruns.

  Args:
    cfg: the study's config.
    workdir: the study workdir (created if missing).

  Raises:
    ValueError: ``workdir`` holds a study run with another config; the message
      names every differing key with both values.
  """
  path = os.path.join(workdir, STUDY_CONFIG)
  now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as read back
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    differ = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k) and k not in SCHEDULING_KEYS)
    if differ:
      raise ValueError(
          f"{workdir} holds a study run with another config; differing keys: "
          + "; ".join(f"{k}: workdir {before.get(k)!r}, now {now.get(k)!r}" for k in differ)
          + ". Rerun with the workdir's config to resume it, or use a new workdir."
      )
    return
  os.makedirs(workdir, exist_ok=True)
  runs.write_json(path, now)


def run_study(cfg: StudyConfig, workdir: str, train_config: Callable[[str, str, int, str], job.TrainConfig]) -> str:
  """Runs (or resumes) every stage; returns the report path.

  Every training config is built (and so checked) before any work.

  Args:
    cfg: what the study runs.
    workdir: the study workdir (layout in the module docstring).
    train_config: ``train_config(model, method, seed, standard_dir)`` gives the
      training config (a :class:`qsim.train.job.TrainConfig`) of one run;
      ``standard_dir`` is the same seed's standard run (QAT starts from it).

  Returns:
    The path of the study report, ``<workdir>/report.md``.

  Raises:
    ValueError: ``cfg`` or a training config is not valid, or ``workdir``
      holds a study run with another config (:func:`claim_workdir`).
  """
  from qsim.study import report  # matplotlib only when reporting

  t0 = time.time()
  train_configs = {}
  for seed in cfg.seeds:  # every training config built (and validated) before any work
    for model in cfg.models:
      for method in cfg.methods:
        train_configs[(model, method, seed)] = train_config(
            model, method, seed, train_dir(workdir, model, "standard", seed)
        )
  claim_workdir(cfg, workdir)
  clock = _StageClock(workdir)
  order = sorted(
      train_configs, key=lambda k: (k[2], cfg.models.index(k[0]), k[1] != "standard", cfg.methods.index(k[1]))
  )
  todo = [k for k in order if not os.path.exists(os.path.join(train_dir(workdir, *k), runs.SUMMARY))]
  first = [k for k in todo if k[1] == "standard"]  # the others may start from these
  for phase in (first, [k for k in todo if k[1] != "standard"]):
    jobs = [
        (f"{order.index(k) + 1}/{len(order)}: {k[0]} / {k[1]} / seed {k[2]}", train_configs[k], train_dir(workdir, *k))
        for k in phase
    ]
    _train_all(jobs, cfg.train_workers, t0, lambda: clock.done("train"))
  clock.done("train")
  ckpts = [train_dir(workdir, *k) for k in order]
  _log(f"[study] evaluate {len(ckpts)} checkpoints x {len(cfg.all_quantizers)} quantizers ({time.time() - t0:.0f} s)")
  shifts = cfg.shift_names()
  sweep.run_sweep(
      sweep.SweepConfig(
          checkpoints=tuple(ckpts),
          quantizers=tuple(cfg.all_quantizers),
          shifts=tuple(shifts),
          limit=cfg.limit,
          shift_limit=cfg.shift_limit,
          batch_size=cfg.eval_batch_size,
          calib_samples=cfg.calib_samples,
          data_dir=cfg.data_dir,
      ),
      os.path.join(workdir, "eval"),
  )
  clock.done("evaluate")
  if cfg.retrain_quantizers and "standard" in cfg.methods:
    for seed in cfg.seeds:
      for model in cfg.models:
        _log(f"[study] retrain {model} / seed {seed} ({time.time() - t0:.0f} s)")
        run_retrain(
            cfg.retrain_config(train_dir(workdir, model, "standard", seed), tuple(shifts), seed),
            os.path.join(workdir, "retrain", model, f"seed{seed}"),
        )
  clock.done("retrain")
  path = report.write_report(workdir)
  clock.done("report")
  _log(f"[study] done in {time.time() - t0:.0f} s: {path}")
  return path
