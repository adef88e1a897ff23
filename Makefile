# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.preftune-installed

.PHONY: demo test install bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this version is a local CPU wheel; anything else pulls CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,bench,dissect,ranking-bench,deepspeed]"
	# LibAUC (parity tests of the ranking family): without its dependencies, which would replace torch
	$(PY) -m pip install -q --no-deps libauc==2.0.1
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# The quick start (DPO on bundled pairs, before/after), then the main job: the default arena,
# which ends by printing where its report is.
demo: $(STAMP)
	$(VENV)/bin/preftune demo --output runs/demo
	$(VENV)/bin/preftune arena --output runs/arena

bench-quick: $(STAMP)
	$(PY) benchmarks/bench_dpo.py --quick

bench: $(STAMP)
	$(PY) benchmarks/bench_dpo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
