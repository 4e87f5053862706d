# make demo    - create .venv, install, run the whole workflow on the embedded synthetic world
# make test    - create .venv if needed, run the tests (unit tests, the smoke preset's DAG, Slurm)
# make report  - results/demo/report.html of a finished demo
# make docs    - the documentation site, into site/
# make study   - the converged run: the demo's world, networks trained to a plateau (presets/study.yaml)
# make lint    - ruff, snakefmt and snakemake --lint
# make gpu-benchmark - on a CUDA machine: sampler, projected analysis and training times

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A range that the CPU wheel 2.13.0 satisfies; override for a CUDA build, e.g.
#   make demo TORCH_SPEC='torch>=2.4,<2.14' PIP_EXTRA='--index-url https://download.pytorch.org/whl/cu124'
TORCH_SPEC ?= torch>=2.4,<=2.13.0
PIP_EXTRA ?=
CORES ?= all
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint dry-run clean-demo help report gpu-benchmark study docs

help:
	@sed -n '1,7p' Makefile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[workflow,dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile presets/demo.yaml

study: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile presets/demo.yaml presets/study.yaml

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile presets/demo.yaml

# Self-contained HTML report of a finished demo run: figures, captions, tables, config.
report: $(STAMP)
	$(BIN)/snakemake --report results/demo/report.html --configfile presets/demo.yaml

# Paper-size timings on a CUDA GPU in a few minutes (benchmarks/gpu.py; on a CPU-only machine:
#   .venv/bin/python benchmarks/gpu.py --device cpu --quick).
gpu-benchmark: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --device cuda --out results/gpu-benchmark.md

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails it (--strict).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile presets/demo.yaml

clean-demo:
	rm -rf results/demo resources/synthetic-demo
