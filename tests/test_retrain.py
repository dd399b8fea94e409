"""The retraining loop on a real (tiny) checkpoint: accounting identities on
its output, pool and evaluation never sharing a sample id, a clean stop when
the pool has no disagreements, reproducibility, resume, bad input, report."""

import os

import numpy as np
import pytest

from qsim.evaluate.engine import Engine, build_quantizers
from qsim.evaluate.report import read_rows
from qsim.results import ResultsStore
from qsim.models import get_model
from qsim.retrain import RetrainConfig, check_disjoint, parse_split, run_retrain, select
from qsim.retrain import report
from qsim.runs import load_variables

SMALL = dict(
    quantizers=("w4a4", "float32"),
    strategies=("all", "margin", "random"),
    seeds=(0,),
    rounds=1,
    pool="val[:200]",
    eval_split="test[:150]",
    shifts=("c/fog/3",),
    shift_limit=80,
    epochs=0.1,
    train_limit=600,
    calib_samples=40,
    eval_batch_size=80,
    learning_rate=3e-3,
)


def _part_bytes(wd):
  parts = os.path.join(wd, "parts")
  return {f: open(os.path.join(parts, f), "rb").read() for f in os.listdir(parts)}


@pytest.fixture(scope="module")
def done(tiny_ckpt, tmp_path_factory):
  """One round, then the same workdir extended to two rounds (a resume)."""
  wd = str(tmp_path_factory.mktemp("retrain"))
  run_retrain(RetrainConfig(checkpoint=str(tiny_ckpt), **SMALL), wd)
  first = _part_bytes(wd)
  rows1 = read_rows(os.path.join(wd, "results.csv"))
  path = run_retrain(RetrainConfig(checkpoint=str(tiny_ckpt), **{**SMALL, "rounds": 2}), wd)
  return wd, first, rows1, read_rows(path)


def test_accounting_identities_hold_on_the_real_output(done, tiny_ckpt):
  wd, _, _, rows = done
  ran = [r for r in rows if r["status"] == "done"]
  assert {(r["quantizer"], r["strategy"], r["round"]) for r in ran} == {
      ("w4a4", s, k) for s in SMALL["strategies"] for k in (1.0, 2.0)
  }
  store = ResultsStore(wd)
  for r in ran:
    assert r["before"] == r["resolved"] + r["persisted"] and r["after"] == r["persisted"] + r["new"]
    assert r["n"] == (150 if r["set"] == "clean" else 80)
  # 'before' is what the engine measures on the original checkpoint
  model = get_model("lenet_tiny", num_classes=10)
  from qsim import data

  test = data.load("fashion_mnist_debian", "test", limit=150)
  calib = data.load("fashion_mnist_debian", "train", limit=40)
  v = load_variables(str(tiny_ckpt))
  res = Engine(model, v, build_quantizers(model, v, ["w4a4"], calib.x), batch_size=80).run(test.x, test.y)
  clean_before = int((res.quant_pred[0] != res.float_pred).sum())
  assert clean_before > 0
  assert {r["before"] for r in ran if r["set"] == "clean"} == {clean_before}
  # 'after' is what the stored per-sample predictions of that round say
  for strategy in SMALL["strategies"]:
    key = store.key("w4a4", strategy, "0", "2")
    s = store.samples(key)
    after = [r for r in ran if r["strategy"] == strategy and r["round"] == 2.0]
    for i, r in enumerate(sorted(after, key=lambda r: r["set_index"])):
      assert r["after"] == int((s[f"s{i}_float_pred"] != s[f"s{i}_quant_pred"]).sum())


def test_pool_and_evaluation_never_share_a_sample(done):
  wd, _, _, rows = done
  with np.load(os.path.join(wd, "sample_ids.npz")) as z:
    ids = {k: set(z[k].tolist()) for k in z.files if k != "set_names"}
  pool = ids.pop("pool")
  assert len(pool) == 200 and all(i.startswith("train:") for i in pool)
  for name, other in ids.items():
    assert not pool & {i.split("~")[0] for i in other}, name
  assert len(ids["set0"]) == 150 and len(ids["set1"]) == 80
  ran = [r for r in rows if r["status"] == "done" and r["set"] == "clean"]
  for strategy in SMALL["strategies"]:
    chosen = []
    for rnd in (1, 2):
      with np.load(os.path.join(wd, "models", "w4a4", strategy, "seed0", f"round{rnd}", "selection.npz")) as z:
        sel = set(z["ids"].tolist())
        r = next(r for r in ran if r["strategy"] == strategy and r["round"] == rnd)
        assert sel <= pool and len(sel) == r["selected"]
        assert r["selected"] == r["pool_disagreements"]  # budget 0: every strategy adds as many as 'all'
        assert r["pool_size"] == 200 - len(chosen)  # earlier rounds' picks leave the pool
        chosen += sorted(sel)
    assert len(set(chosen)) == len(chosen)


def test_a_pool_without_disagreements_stops_cleanly(done):
  wd, _, _, rows = done
  stopped = [r for r in rows if r["quantizer"] == "float32"]
  assert len(stopped) == 3 and all(r["status"] == "no_disagreements" and r["round"] == 1.0 for r in stopped)
  assert all(r["selected"] == 0 and r["pool_disagreements"] == 0 for r in stopped)
  assert not os.path.exists(os.path.join(wd, "models", "float32", "all", "seed0", "round1", "checkpoints"))


def test_resume_keeps_finished_rounds(done):
  wd, first, rows1, rows = done
  after = _part_bytes(wd)
  assert all(after[f] == b for f, b in first.items())  # round 1 was not redone
  assert len(after) == len(first) + 3  # one new part per w4a4 strategy
  key = lambda r: (r["quantizer"], r["strategy"], r["round"], r["set"])  # noqa: E731
  assert sorted(map(key, rows1)) == sorted(key(r) for r in rows if r["round"] == 1.0)
  assert len({key(r) for r in rows}) == len(rows)  # no duplicated rows


def test_a_round_is_reproducible_for_a_seed(done, tiny_ckpt, tmp_path):
  wd, _, rows1, _ = done
  again = read_rows(
      run_retrain(
          RetrainConfig(checkpoint=str(tiny_ckpt), **{**SMALL, "quantizers": ("w4a4",), "strategies": ("random",)}),
          str(tmp_path),
      )
  )
  ref = [r for r in rows1 if r["quantizer"] == "w4a4" and r["strategy"] == "random"]
  assert len(again) == len(ref) == 2  # clean + fog
  for a, b in zip(again, ref):
    assert {k: v for k, v in a.items()} == {k: v for k, v in b.items()} or all(
        a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a
    )


def test_bad_input(tiny_ckpt, tmp_path):
  ck = str(tiny_ckpt)
  cases = [
      (
          dict(strategies=("best",)),
          r"strategies=\['best'\] is not valid; choose from \['all', 'margin', 'random', 'none', 'search'\]",
      ),
      (dict(strategies=("search",), search_norm="l1"), "norm='l1' is not a known perturbation model"),
      (dict(strategies=("search",), search_eps=0.0), "eps=0.0 is not valid for norm='linf'"),
      (dict(strategies=("search",), search_seeds=0), "search_seeds=0 is not valid; give an int >= 1"),
      (dict(quantizers=("w4a4", "w4a4")), "lists one twice"),
      (dict(pool="valid"), "split 'valid' is not valid; use train, val or test"),
      (dict(rounds=0), "rounds=0 is not valid; give an int >= 1"),
      (dict(finetune="qat", quantizers=("tflite_int8",)), "static activation ranges"),
      (dict(pool="val[300:300]"), r"split 'val\[300:300\]' selects no samples"),
      (dict(pool="test[:50]"), r"the candidate pool and evaluation set 'clean' share 50 samples \(e.g. test:0\)"),
      (dict(pool="train[:100]"), "the candidate pool and the fine-tuning data share 100 samples"),
      (dict(pool_shifts=("c/nope/1",)), "pool shift 'c/nope/1' is not a synthetic shift"),
  ]
  for change, msg in cases:
    with pytest.raises(ValueError, match=msg):
      run_retrain(RetrainConfig(checkpoint=ck, **{**SMALL, **change}), str(tmp_path / "bad"))
  with pytest.raises(FileNotFoundError, match="is not a training workdir"):
    run_retrain(RetrainConfig(checkpoint=str(tmp_path), **SMALL), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "models")  # nothing started


def test_select_strategies():
  rng = np.random.default_rng(0)
  dis = np.array([0, 1, 0, 1, 1, 0, 0, 0], bool)
  margin = np.array([0.1, 0.9, 0.8, np.nan, 0.5, 0.95, 0.2, 0.3])
  assert select("all", dis, margin, 0, rng).tolist() == [1, 3, 4]
  assert select("margin", dis, margin, 3, rng).tolist() == [1, 2, 5]  # least sure first; NaN never first
  r = select("random", dis, margin, 3, rng)
  assert len(set(r.tolist())) == 3 and r.tolist() == sorted(r.tolist())
  assert select("none", dis, margin, 3, rng).tolist() == []
  assert parse_split("val[:2500]") == ("val", slice(None, 2500)) and parse_split("test") == ("test", slice(None, None))
  check_disjoint(np.array(["train:1"]), {"x": np.array(["train:2~c/fog/1"])})
  with pytest.raises(ValueError, match="share 1 samples"):
    check_disjoint(np.array(["train:1"]), {"x": np.array(["train:1~c/fog/1"])})


def test_report_and_launcher_config(done):
  from PIL import Image
  from experiments.configs import retrain as retrain_config

  wd, _, _, rows = done
  body = open(report.write_report(wd)).read()
  for section in (
      "## Retraining with disagreements",
      "### evaluation split",
      "### shifted sets (summed)",
      "### Float accuracy",
      "retrain.png",
      "lenet_tiny float32/all/seed 0 (round 1)",
  ):
    assert section in body, section
  r = next(r for r in rows if r["strategy"] == "all" and r["round"] == 2.0 and r["set"] == "clean")
  assert (
      f"| lenet_tiny | w4a4 | all | {int(r['added_total'])} | {r['before']:.1f} | {r['after']:.1f} |"
      f" {r['resolved']:.1f} |"
  ) in body
  assert np.asarray(Image.open(os.path.join(wd, "retrain.png")).convert("L")).std() > 10
  c = RetrainConfig.from_config_dict(retrain_config.get_config("checkpoint=/x,runlocal,quantizers=w4a4+fp16,seeds=1+2"))
  assert c.quantizers == ("w4a4", "fp16") and c.seeds == (1, 2) and c.shifts == ("c/fog/3", "c/rotate/2")
  c.validate()
  with pytest.raises(
      ValueError, match=r"seeds=\('a',\) is not valid; give a tuple of ints \(on the command line: a\+b\+c\)"
  ):
    RetrainConfig.from_config_dict(retrain_config.get_config("checkpoint=/x,seeds=a"))
  with pytest.raises(ValueError, match=r"checkpoint='' is not valid; give a train workdir"):
    RetrainConfig.from_config_dict(retrain_config.get_config(""))


def test_qat_finetuning_and_static_ranges_recalibrated(tiny_ckpt, tmp_path):
  from qsim import data

  cfg = RetrainConfig(
      checkpoint=str(tiny_ckpt),
      **{
          **SMALL,
          "quantizers": ("tflite_int8",),
          "strategies": ("margin",),
          "shifts": (),
          "finetune": "qat",
          "qat_quant": "w8a8",
          "budget": 30,
      },
  )
  rows = read_rows(run_retrain(cfg, str(tmp_path)))
  assert len(rows) == 1 and rows[0]["finetune"] == "qat:w8a8" and rows[0]["selected"] == 30
  # 'after' is the fine-tuned model quantized with ranges calibrated anew on it
  rdir = tmp_path / "models" / "tflite_int8" / "margin" / "seed0" / "round1"
  model = get_model("lenet_tiny", num_classes=10)
  calib = data.load("fashion_mnist_debian", "train", limit=40).x
  test = data.load("fashion_mnist_debian", "test", limit=150)
  old, new = load_variables(str(tiny_ckpt)), load_variables(str(rdir))
  q_new = build_quantizers(model, new, ["tflite_int8"], calib)
  q_old = build_quantizers(model, old, ["tflite_int8"], calib)
  import jax

  assert any(
      bool((a != b).any()) for a, b in zip(jax.tree.leaves(q_new[0].quant_stats), jax.tree.leaves(q_old[0].quant_stats))
  )
  res = Engine(model, new, q_new, batch_size=80).run(test.x, test.y)
  assert rows[0]["after"] == int((res.quant_pred[0] != res.float_pred).sum())
  assert (
      ResultsStore(str(tmp_path)).samples(ResultsStore.key("tflite_int8", "margin", "0", "1"))["s0_quant_pred"].tolist()
      == res.quant_pred[0].tolist()
  )


def test_search_strategy_adds_found_disagreements_with_their_seeds_labels(tiny_ckpt, tmp_path):
  import jax.numpy as jnp

  from qsim.retrain.pool import Splits
  from qsim.runs import Run
  from qsim.search import attacks

  eps = 32 / 255
  cfg = RetrainConfig(
      checkpoint=str(tiny_ckpt),
      **{**SMALL, "quantizers": ("w4a4",), "strategies": ("search",), "search_eps": eps, "search_steps": 6},
      search_seeds=120,
  )
  rows = read_rows(run_retrain(cfg, str(tmp_path)))
  assert {r["strategy"] for r in rows} == {"search"} and len(rows) == 2
  r = rows[0]
  assert r["search_seeds"] == 120 and 0 < r["search_found"] <= 120
  assert r["selected"] == min(r["pool_disagreements"], r["search_found"])  # as many as 'all' adds, when found
  with np.load(tmp_path / "models" / "w4a4" / "search" / "seed0" / "round1" / "selection.npz") as z:
    sel = dict(z)
  run = Run.open(str(tiny_ckpt))
  pool = Splits(run.dataset, val_size=run.config.get("val_size") or None).part("val[:200]")
  seeds = pool.take(sel["index"])
  assert [str(i) for i in sel["ids"]] == [str(i) for i in seeds.ids] and len(sel["x"]) == r["selected"]
  d = sel["x"] - seeds.x
  assert 0 < np.abs(d).max() <= eps + 1e-6 and sel["x"].min() >= 0 and sel["x"].max() <= 1
  train = Splits(run.dataset, val_size=run.config.get("val_size") or None).part("train[:600]")
  qz = build_quantizers(run.model, run.variables, ["w4a4"], train.x[:40])[0]  # as the round calibrates
  pair = attacks.Pair(run.model, run.variables, qz.config, qz.quant_stats)
  zf, zq = (np.asarray(z).argmax(-1) for z in pair.logits(jnp.asarray(sel["x"])))
  f0 = np.asarray(pair.logits(jnp.asarray(seeds.x))[0]).argmax(-1)
  assert (zf == f0).all() and (zq != zf).all()  # real disagreements of the model the round started from
  before = _part_bytes(str(tmp_path))
  run_retrain(cfg, str(tmp_path))  # resumes: the round is not searched or trained again
  assert _part_bytes(str(tmp_path)) == before
