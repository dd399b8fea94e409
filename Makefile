# qsim: the README's two set-up commands (study, test), and the demo.
#   make study  creates .venv, installs qsim and the offline Fashion-MNIST data,
#               runs the main job end to end (the study, quick setting).
#   make demo   the smaller LeNet-5 bit-grid demo.
#   make test   creates .venv, installs qsim with its test extra, runs pytest
#               on 2 workers (pytest-xdist), one test file per worker at a time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
OUT ?= runs/demo
STUDY_OUT ?= runs/study

.PHONY: study demo test venv data bench clean format format-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  echo "Installing Debian's dataset-fashion-mnist (needs root)..."; \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

study: venv data
	$(PY) -m experiments.study --config=experiments/configs/study.py:quick --workdir=$(STUDY_OUT)

demo: venv data
	$(PY) -m experiments.demo --workdir=$(OUT)

test: venv data
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=40 tests

FORMATTED := qsim experiments tests benchmarks

format: venv
	$(VENV)/bin/pyink $(FORMATTED)

format-check: venv
	$(VENV)/bin/pyink --check $(FORMATTED)

bench: venv data
	$(PY) benchmarks/quant_overhead.py
	$(PY) benchmarks/grid_mapping.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/vs_tflite.py

clean:
	rm -rf $(VENV) runs .pytest_cache
