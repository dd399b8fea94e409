"""The study's architectures: shapes, parameter counts, quantized forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim.models import MODELS, get_model
from qsim.quant import preset
from qsim.train.loop import init_state, make_optimizer, make_train_step
from qsim.train.methods import MethodConfig

KEY = jax.random.key(0)


def _input(name, batch=2):
  if name.startswith(("lstm", "gru")) and "rows" not in name:
    return jnp.ones((batch, 7), jnp.int32)
  if name.startswith("lenet") or "rows" in name:
    return jnp.ones((batch, 28, 28, 1))
  return jax.random.uniform(KEY, (batch, 32, 32, 3))


TINY = sorted(n for n in MODELS if n.endswith("_tiny"))


# The deepest tiny models take a minute to compile a train step on the 2-core
# CI machine; their float step (every layer exactly flax's, tests/test_layers)
# is left to the quantized one, which runs the same layers plus quantization.
QUANT_STEP_ONLY = ("densenet121_tiny", "resnet50_tiny")


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_forward_and_train_step_float_and_quantized(name):
  x = _input(name, 4)
  y = jnp.array([0, 1, 2, 3])
  for quant in (None, preset("w8a8")):
    model = get_model(name, num_classes=10, quant=quant)
    state = init_state(model, x[:1], make_optimizer("adam", 1e-3, 10), 0)
    variables = {"params": state.params}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    assert jax.eval_shape(model.apply, variables, x).shape == (4, 10)
    if quant is None and name in QUANT_STEP_ONLY:
      continue
    new, loss, _ = make_train_step(model, MethodConfig())(state, x, y, KEY)
    assert np.isfinite(float(loss)) and int(new.step) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert all(jax.tree.leaves(changed)), f"{name}: some parameters got no update"


@pytest.mark.parametrize(
    "name,classes,shape,expected",
    [
        ("lenet1", 10, (1, 28, 28, 1), 7206),  # 'same' convs (PAPER.md): 7*7*12 -> 10
        ("lenet5", 10, (1, 28, 28, 1), 107786),  # 'same' convs on 28x28: 7*7*16 -> 120
        # 0.27M: stem 432 + stages 14016 + 51552 + 205504 + final BN 128 + head 650
        ("resnet20", 10, (1, 32, 32, 3), 272282),
        # the published ImageNet counts, less their 1000-way head, plus a 182-way one
        ("resnet50", 182, (1, 64, 64, 3), 25_557_032 - (2048 * 1000 + 1000) + (2048 * 182 + 182)),
        ("densenet121", 182, (1, 64, 64, 3), 7_978_856 - (1024 * 1000 + 1000) + (1024 * 182 + 182)),
        # Embedding(20000, 128) + 4 gates (input kernel, recurrent kernel, bias) + head
        ("lstm", 2, (1, 200), 20000 * 128 + 4 * (128 * 50 + 50 * 50 + 50) + 50 * 2 + 2),
        # flax GRU: biases on ir, iz, in and hn
        ("gru", 2, (1, 200), 20000 * 128 + 3 * (128 * 75 + 75 * 75) + 4 * 75 + 75 * 2 + 2),
    ],
)
def test_full_size_parameter_counts(name, classes, shape, expected):
  model = get_model(name, num_classes=classes)
  x = jnp.ones(shape, jnp.int32 if name in ("lstm", "gru") else jnp.float32)
  shapes = jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, x))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])) == expected


def test_nin_ends_in_class_maps_and_global_pool():
  model = get_model("nin", num_classes=10)
  shapes = jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, jnp.ones((1, 32, 32, 3))))
  p = shapes["params"]
  assert p["block1_conv1"]["kernel"].shape == (5, 5, 3, 192)
  assert p["block3_conv3"]["kernel"].shape == (1, 1, 192, 10)


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match=r"model='vgg16' is not valid; choose one of .*'lenet5'"):
    get_model("vgg16", num_classes=10)
