# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
# Both create .venv when missing. torch is installed first from its pinned CPU wheel, so that the
# project's own `torch>=...` requirement is already met and pip never fetches a CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HARDNEG_DATA ?= $(abspath ../shared/data)
export HARDNEG_DATA
OUT ?= runs/demo

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/hardneg evaluate --data scifact --split test --retriever bm25,dense,hybrid --out $(OUT) --overwrite

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check retriever mining_jobs tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
