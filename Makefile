# Two commands matter: `make demo` (the whole study on the embedded synthetic corpus) and `make test`.
# Each one creates/updates the local virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# TORCH_CUDA=cu128 (for example) installs the CUDA-12 build of the pinned torch from the PyTorch index, for
# nodes whose NVIDIA driver is older than the 580 that the default (CUDA 13) wheel needs; see the README.
TORCH_CUDA ?=
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
TORCHAUDIO_VERSION := $(shell sed -n 's/^torchaudio==//p' constraints.txt)
STAMP := $(VENV)/.installed$(if $(TORCH_CUDA),-$(TORCH_CUDA))

.PHONY: demo test env clean-demo

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_CUDA),$(BIN)/python -m pip install --quiet --index-url https://download.pytorch.org/whl/$(TORCH_CUDA) \
		torch==$(TORCH_VERSION) torchaudio==$(TORCHAUDIO_VERSION))
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# The demo prints, every 10 s, one line per running job from its log (step/total, ETA: sslam/runtime/watch.py);
# its jobs write a progress line every PROGRESS_SECONDS (30 s elsewhere). results/demo is config/demo.yaml's.
PROGRESS_SECONDS ?= 5
demo: $(STAMP)
	SSLAM_PROGRESS_SECONDS=$(PROGRESS_SECONDS) $(BIN)/python -m sslam.runtime.watch --logs results/demo/logs -- \
		$(BIN)/snakemake --snakefile workflow/Snakefile --configfile config/demo.yaml --cores $(CORES) --rerun-incomplete --printshellcmds

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf results/demo
