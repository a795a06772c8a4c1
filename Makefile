# Two commands take a fresh clone to a result: `make demo` and `make test`.
# Both create/update .venv themselves (plain pip + constraints.txt pins).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip

.PHONY: setup demo test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create/update the virtualenv

demo: $(STAMP) ## world -> toy teacher -> extract -> train -> eval; writes runs/demo/summary.json
	$(BIN)/zeroseg run --config jobs/demo.yaml

test: $(STAMP) ## unit + integration tests (real local Ray, real zarr), toy-teacher accuracy goals
	$(BIN)/python -m pytest -q --timeout=1800

test-fast: $(STAMP) ## everything except the minutes-long toy-teacher pretraining check
	$(BIN)/python -m pytest -q -m "not slow" --timeout=900

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## benchmarks print JSON lines with measured ratios
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/affinity.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
