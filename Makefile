# Two commands matter: `make demo` (the whole study on the embedded synthetic corpus) and `make test`.
# Each one creates/updates the local virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test env clean-demo

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --snakefile workflow/Snakefile --configfile config/demo.yaml --cores $(CORES) --rerun-incomplete --printshellcmds

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf results/demo
