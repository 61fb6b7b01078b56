# zipformer-adapter: two commands for a newcomer.
#   make demo   set up, then run the embedded two-domain demo (egs/synth/ASR)
#   make test   set up, then run the test suite
# Both create a virtual environment in .venv on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# This platform ships a CPU build of PyTorch as a local wheel; pip finds it
# through find-links. Without it, `torch` from the index is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_LINKS) "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q test

lint: setup
	$(PY) -m ruff check .

demo: setup
	PYTHON=$(abspath $(PY)) egs/synth/ASR/run.sh

clean:
	rm -rf $(VENV) .pytest_cache
