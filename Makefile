# Two commands from a fresh clone:  `make demo` (set up + default audit)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# optional extras to install, e.g. `make test EXTRAS=test,flower,dp` (CI does)
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup demo test test-fast lint reproduce reproduce-ci clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gradleak audit --out out/audit

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest

# everything but the tests marked slow (under a minute)
test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -m "not slow"

# style, types and import contracts (configured in pyproject.toml); needs the test extra
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# every benchmark's --check: reruns a small seeded subset and compares with the committed numbers, or with the
# results file's record for this kind of CPU where it has one (core, fedavg_order, leakage_over_training; README)
# (about 6 minutes on an idle 2-core machine; each prints its tolerance and exits 1 on a mismatch)
CHECKS := labels labels_vs_official analytic spear cocktail imprint malicious guard dp_bounds sweep generative gradinversion fedavg_order core leakage_over_training
reproduce: $(STAMP)  # the dp_bounds check needs Opacus: make reproduce EXTRAS=test,flower,dp
	set -e; for b in $(CHECKS); do OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/$$b/run.py --check; done

# the short subset CI runs (about 20 s; the generative check needs the Debian package dataset-fashion-mnist)
reproduce-ci: $(STAMP)
	$(MAKE) reproduce CHECKS="labels analytic spear"

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
