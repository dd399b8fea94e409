"""TFLite export, runner and fidelity measurement (needs ``qsim[tflite]``).

``qsim.export.tflite``: export a qsim model in the study's TFLite modes and
run it with the interpreter; ``qsim.export.fidelity``: agreement of qsim's
presets with the real TFLite models on clean and shifted sets. TensorFlow
is imported only when a model is exported or run.
"""
