"""Disagreement search: inputs that make a quantized model disagree with its
float original, white-box through the straight-through estimator, and
black-box baselines (random, DFlare-style MCMC)."""
