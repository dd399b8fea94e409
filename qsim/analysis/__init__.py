"""The quantization debugger: which layer causes the disagreements, and the
mixed-precision config that removes them."""
