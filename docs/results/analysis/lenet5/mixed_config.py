"""The mixed-precision config qsim's debugger chose (written by qsim.analysis).

  python -m experiments.evaluate --config=THIS_FILE --workdir=runs/eval_mixed
  python -m experiments.evaluate --config=THIS_FILE:shifts=c,limit=1000 --workdir=runs/eval_mixed
"""

from experiments.configs import evaluate
from qsim.quant import QuantConfig
from qsim.quant.spec import LayerSpec, TensorSpec

CONFIG = QuantConfig(
    default=None,
    rules=(
        ('^conv1$', LayerSpec(weight=TensorSpec(format='int', bits=8, granularity='per_channel', axis=None, symmetric=True, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), act=TensorSpec(format='int', bits=8, granularity='per_tensor', axis=None, symmetric=False, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), state=None, output=None, const=None, int_bias=False, min_weights=0, fold_bn=False, inplace_ranges=False, requant='fp32', add_requant='fp32', calibrated_gates=False, u8s8_pairs='none', gemm_gates=False)),
        ('^conv2$', LayerSpec(weight=TensorSpec(format='int', bits=6, granularity='per_channel', axis=None, symmetric=True, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), act=TensorSpec(format='int', bits=8, granularity='per_tensor', axis=None, symmetric=False, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), state=None, output=None, const=None, int_bias=False, min_weights=0, fold_bn=False, inplace_ranges=False, requant='fp32', add_requant='fp32', calibrated_gates=False, u8s8_pairs='none', gemm_gates=False)),
        ('^dense1$', LayerSpec(weight=TensorSpec(format='int', bits=3, granularity='per_channel', axis=None, symmetric=True, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), act=TensorSpec(format='int', bits=8, granularity='per_tensor', axis=None, symmetric=False, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), state=None, output=None, const=None, int_bias=False, min_weights=0, fold_bn=False, inplace_ranges=False, requant='fp32', add_requant='fp32', calibrated_gates=False, u8s8_pairs='none', gemm_gates=False)),
        ('^dense2$', LayerSpec(weight=TensorSpec(format='int', bits=4, granularity='per_channel', axis=None, symmetric=True, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), act=TensorSpec(format='int', bits=8, granularity='per_tensor', axis=None, symmetric=False, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), state=None, output=None, const=None, int_bias=False, min_weights=0, fold_bn=False, inplace_ranges=False, requant='fp32', add_requant='fp32', calibrated_gates=False, u8s8_pairs='none', gemm_gates=False)),
        ('^head$', LayerSpec(weight=TensorSpec(format='int', bits=5, granularity='per_channel', axis=None, symmetric=True, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), act=TensorSpec(format='int', bits=8, granularity='per_tensor', axis=None, symmetric=False, calibration='absmax', percentile=99.99, mse_steps=20, mse_min_ratio=0.2, rounding='nearest_even', range='dynamic', qparams='standard'), state=None, output=None, const=None, int_bias=False, min_weights=0, fold_bn=False, inplace_ranges=False, requant='fp32', add_requant='fp32', calibrated_gates=False, u8s8_pairs='none', gemm_gates=False)),
    ),
    name='mixed',
)


def get_config(arg: str = ""):
  c = evaluate.get_config("checkpoint=/work/main/runs/lenet5," + arg)
  c.quantizers = (CONFIG,)
  return c
