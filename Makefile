# mpq: the user's entry points. Every target that needs Python sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS := onboard,sim,offboard,dev,bench
STAMP  := $(VENV)/.mpq-installed
TASK   ?= pendulum
BACKEND ?= c

.PHONY: setup test lint format bench plan clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m offboard.bench

# Plan once from the task's hanging start and print the plan (what runs today before `make demo`).
plan: setup
	$(BIN)/python -m onboard plan --task $(TASK) --backend $(BACKEND) $(if $(Q),--q $(Q))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
