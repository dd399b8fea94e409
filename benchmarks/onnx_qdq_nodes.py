"""Lists a QDQ ONNX model's op counts and every non-Q/DQ node with where its
inputs come from (initializer, graph input, or producing op): how the
recurrent ORT graphs were traced (BUILD_NOTES, ORT (c)).

  PYTHONPATH=. python benchmarks/onnx_qdq_nodes.py runs/fid_gru_ort/models/ort_int8.onnx
"""

import onnx, numpy as np, sys, collections
from onnx import numpy_helper

m = onnx.load(sys.argv[1])
g = m.graph
init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
prod = {o: n for n in g.node for o in n.output}
cnt = collections.Counter(n.op_type for n in g.node)
print(cnt)
# float ops (not Q/DQ) whose inputs are not DQ outputs
for n in g.node:
  if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
    continue
  ins = []
  for i in n.input:
    p = prod.get(i)
    if i in init:
      a = init[i]
      ins.append(f"{i}:init{a.shape}")
    elif p is None:
      ins.append(f"{i}:graphin")
    else:
      ins.append(f"{i}<-{p.op_type}")
  print(n.op_type, n.name, ins, "->", list(n.output))
