# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install, run qsmprep participant + group on the bundled example
#   make test   - create .venv, install, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO_BIDS ?= bids_examples/ds-megre
DEMO_OUT  ?= demo_out

.PHONY: demo test venv clean examples benchmark

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/torch.txt requirements/runtime.txt requirements/test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a local CPU wheel here; a bare "torch" pulls a multi-GB CUDA build
	$(PIP) install -q -r requirements/torch.txt
	$(PIP) install -q -r requirements/test.txt
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/qsmprep $(DEMO_BIDS) $(DEMO_OUT) participant -w $(DEMO_OUT)_work --nprocs 2
	$(VENV)/bin/qsmprep $(DEMO_BIDS) $(DEMO_OUT) group
	@echo ""
	@echo "Demo finished. Results (BIDS derivatives) are in: $(abspath $(DEMO_OUT))"
	@echo "  per-subject reports: $(abspath $(DEMO_OUT))/sub-*.html"
	@echo "  group tables:        $(abspath $(DEMO_OUT))/group/"

test: $(STAMP)
	$(PY) -m pytest -q tests

examples: $(STAMP)
	$(PY) bids_examples/make_examples.py

benchmark: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

clean:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)_work .pytest_cache
