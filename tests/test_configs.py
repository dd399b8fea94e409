"""Typed job configs (qsim.configs): every launcher's ConfigDict becomes its
library dataclass with every key and value type checked."""

import dataclasses

import pytest

from experiments.configs import ablate, evaluate, fidelity, mnist, retrain, study
from qsim import configs
from qsim.evaluate.sweep import SweepConfig
from qsim.retrain import RetrainConfig
from qsim.study import StudyConfig
from qsim.train.job import TrainConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Toy(configs.FromConfigDict):
  name: str
  lr: float
  seeds: tuple[int, ...] = (0,)
  box: tuple[float, float] | None = None


def test_values_are_converted_and_checked():
  toy = _Toy.from_config_dict({"name": "a", "lr": 1, "seeds": [1, 2], "box": [0, 1]})
  assert toy == _Toy(name="a", lr=1.0, seeds=(1, 2), box=(0.0, 1.0)) and isinstance(toy.lr, float)
  assert _Toy.from_config_dict({"name": "a", "lr": 0.1}, box=None).box is None
  for bad, message in [
      ({"name": "a", "lr": 0.1, "sedes": (1,)}, r"config keys \['sedes'\] are not valid for _Toy; valid keys are"),
      ({"name": "a"}, r"config has no \['lr'\]"),
      ({"name": "a", "lr": "fast"}, r"lr='fast' is not valid; give a number"),
      ({"name": "a", "lr": 0.1, "seeds": (1, "x")}, r"seeds=\(1, 'x'\) is not valid; give a tuple of ints"),
      ({"name": "a", "lr": 0.1, "seeds": "1+2"}, r"give a tuple of ints \(on the command line: a\+b\+c\)"),
      ({"name": True, "lr": 0.1}, r"name=True is not valid; give a string"),
      ({"name": "a", "lr": 0.1, "box": (0, 1, 2)}, r"box=\(0, 1, 2\) is not valid; give a tuple of 2 values or None"),
  ]:
    with pytest.raises(ValueError, match=message):
      _Toy.from_config_dict(bad)


def test_every_launcher_config_builds_its_library_config():
  assert TrainConfig.from_config_dict(mnist.get_config("runlocal,method=pgd")).method == "pgd"
  c = SweepConfig.from_config_dict(evaluate.get_config("checkpoint=runs/x,quantizers=w4a4+fp16,shifts=c/fog"))
  assert (c.checkpoints, c.quantizers, c.shifts) == (("runs/x",), ("w4a4", "fp16"), ("c/fog",))
  c = SweepConfig.from_config_dict(ablate.get_config("checkpoints=a+b,weight_bits=2+8,act_bits=8+float,presets=fp16"))
  assert c.checkpoints == ("a", "b") and c.quantizers == ("w2a8", "w2", "w8a8", "w8", "fp16")
  assert RetrainConfig.from_config_dict(retrain.get_config("checkpoint=x,seeds=3+4,pool_shifts=")).seeds == (3, 4)
  assert StudyConfig.from_config_dict(study.get_config("quick")).seeds == (0, 1)
  full = StudyConfig.from_config_dict(study.get_config(""))
  make = study.train_config_fn(full)
  for method in ("qat", "pgd", "mixup"):  # every other method fine-tunes the same seed's standard run
    t = make("lenet5", method, 2, "runs/std/lenet5/standard/seed2")
    assert (t.method, t.init_from, t.steps, t.seed) == (method, "runs/std/lenet5/standard/seed2", 1000, 2)
  assert make("lenet5", "standard", 2, "").init_from in ("", None) and make("lenet5", "standard", 2, "").steps == 6000
  f = pytest.importorskip("qsim.export.fidelity")
  c = f.FidelityConfig.from_config_dict(fidelity.get_config("checkpoint=r/a+s/b,modes=int8,kernels=builtin"))
  assert c.workdirs("w") == {"r/a": "w/a", "s/b": "w/b"} and c.run_kernels == ["builtin"]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SweepConfig.from_config_dict(evaluate.get_config("")), r"checkpoints=\[\] is not valid"),
        (
            lambda: SweepConfig.from_config_dict(evaluate.get_config("checkpoint=x,quantizers=w4a4+w4a4")),
            "lists one twice",
        ),
        (lambda: SweepConfig.from_config_dict(evaluate.get_config("checkpoint=x,mapping=pmap")), r"mapping='pmap'"),
        (
            lambda: SweepConfig.from_config_dict(ablate.get_config("checkpoints=x,act_bits=8+half")),
            r"act_bits=\[8, 'half'\] is not valid; give ints in 2..16 or float",
        ),
        (lambda: TrainConfig.from_config_dict(mnist.get_config("dataset=mnits")), r"dataset='mnits' is not valid"),
        (lambda: StudyConfig.from_config_dict(study.get_config("qat_quant=tflite_int8")), "static activation ranges"),
        (lambda: StudyConfig.from_config_dict(study.get_config("train_workers=0")), r"train_workers=0 is not valid"),
        (
            lambda: StudyConfig.from_config_dict(study.get_config("methods=pgd+mixup")),
            "pgd_from_standard fine-tunes the 'standard' checkpoint",
        ),
        (
            lambda: StudyConfig.from_config_dict(study.get_config("methods=mixup")),
            "mixup_from_standard fine-tunes the 'standard' checkpoint",
        ),
        (lambda: StudyConfig.from_config_dict(study.get_config("mixup_steps=-5")), r"mixup_steps=-5 is not valid"),
    ],
)
def test_bad_values_are_refused_when_the_config_is_built(build, message):
  with pytest.raises(ValueError, match=message):
    build()
