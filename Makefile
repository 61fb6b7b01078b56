# zipformer-adapter: two commands for a newcomer.
#   make demo   set up, then run the embedded two-domain demo (egs/synth/ASR)
#   make test   set up, then run the test suite
# Both create a virtual environment in .venv on first use.
#   make gpu-check   the recipes end to end on a CUDA machine, and the GPU figures
#   make gpu-wheels  wheels for a GPU machine without network (Python 3.12), into .whl/

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# This platform ships a CPU build of PyTorch as a local wheel; pip finds it
# through find-links. Without it, `torch` from the index is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast demo lint bench clean gpu-check gpu-wheels

setup: $(STAMP)

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_LINKS) "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .
	touch $(STAMP)

# Two pytest workers (pytest-xdist), one file at a time each, one intra-op thread each: the
# suite's training runs are small, so two processes use two cores better than one process
# with two threads.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile test

# The tests not marked slow (unit tests and oracles; no training runs): under 90 s.
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow" test

lint: setup
	$(PY) -m ruff check .

demo: setup
	PYTHON=$(abspath $(PY)) egs/synth/ASR/run.sh

# On a machine with .whl/ (carried from `make gpu-wheels`) and a CUDA torch of its own,
# the wheels are installed into that Python; elsewhere the project's .venv is used.
GPU_OUT ?= $(if $(OUT),$(OUT),bench/gpu-check-out)
WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_17_x86_64 \
	manylinux2014_x86_64 any,--platform $(p))

gpu-check:
	@if [ -d .whl ]; then \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --no-index --no-deps \
	    --find-links .whl -r bench/gpu-requirements.txt && \
	  PYTHONPATH=$(CURDIR) python3 bench/gpu_check.py --out "$(GPU_OUT)"; \
	else \
	  $(MAKE) setup && $(PY) bench/gpu_check.py --out "$(GPU_OUT)"; \
	fi

gpu-wheels: setup
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --abi cp312 $(WHEEL_PLATFORMS) -d .whl -r bench/gpu-requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache
