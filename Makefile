# One command sets up and runs the main job (`make demo`); one sets up and runs the fast tests (`make test`,
# under 3 minutes on 2 cores: every test not marked `slow`), one all of them (`make test-all`, what CI runs).
# Both create .venv when missing. torch is installed first from its pinned CPU wheel, so that the
# project's own `torch>=...` requirement is already met and pip never fetches a CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HARDNEG_DATA ?= $(abspath ../shared/data)
export HARDNEG_DATA
OUT ?= runs/mine

.PHONY: setup demo judges mine ance evaluate reranker demo-filtered test test-all lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The main job, the whole loop on SciFact on 2 cores: fit the false-negative judge that measured best
# (benchmarks/results/judge.md: ensemble+ce, a cross-fitted 1-epoch cross-encoder in runs/demo_ce whose logit
# joins the BM25 and MiniLM features in runs/demo_judge_ce, fitted on the candidates the round will judge: BM25
# and dense top-10, the mining depth of examples/demo.toml, so the round reuses every cross-encoder score;
# benchmarks/results/demo_judge_dev.md compares it with the top-30 fit; the cross-encoder is skipped when its folder
# holds one; the judge is refitted each time, from cached scores in seconds), then one
# ANCE round (mine train:fit with BM25 + dense + the judge's filter, fine-tune all-MiniLM-L6-v2, evaluate base
# and fine-tuned on train:dev and test). It ends by printing the before/after table and recording the loop's
# report, with the machine, in benchmarks/results/demo.md (+ .json, the plot); rerunning reuses every
# finished stage, unless the judge's or base model's content changed (a refit that came out otherwise): then
# loop.overwrite=true starts the loop afresh instead of reusing rounds mined with the old judge.
demo: setup
	mkdir -p runs && date +%s > runs/.demo_started
	test -f runs/demo_ce/folds.json || $(VENV)/bin/hardneg train-reranker --data scifact --split train:fit \
		--folds 2 --epochs 1 --lr 1e-4 --negatives 2 --max-length 128 --eval-split '' --out runs/demo_ce --overwrite
	$(VENV)/bin/hardneg train-judge --data scifact --split train:fit \
		--features bm25,bm25_log,dense,dense_gap,ce --cross-encoder runs/demo_ce --depth 10 \
		--out runs/demo_judge_ce --overwrite
	$(VENV)/bin/hardneg iterate --config examples/demo.toml --set loop.overwrite=true
	$(PY) -m benchmarks.record_run runs/demo demo --command "make demo" --started $$(cat runs/.demo_started) > /dev/null

# Every judge measured against the retrievers it judges (benchmarks/results/judge.md).
judges: setup
	$(VENV)/bin/python -m benchmarks.bench_judge --with-ce --with-bi

# Mining alone: hard negatives for SciFact train (BM25 + the default bi-encoder; no cross-encoder).
mine: setup
	$(VENV)/bin/hardneg mine --data scifact --split train --out $(OUT) --overwrite
	@echo; cat $(OUT)/report.md

# The ANCE loop, 3 rounds, with the full cross-encoder of `make reranker` (examples/ance.toml).
ance: setup
	test -f runs/ce_scifact/folds.json || $(MAKE) reranker
	$(VENV)/bin/hardneg iterate --config examples/ance.toml

# Evaluate BM25, the default bi-encoder and their hybrid on SciFact test, print the table and record it, with the
# machine, in benchmarks/results/evaluate.md (+ .json).
evaluate: setup
	$(VENV)/bin/hardneg evaluate --data scifact --split test --retriever bm25,dense,hybrid --out runs/evaluate --overwrite
	$(PY) -m benchmarks.record_run runs/evaluate evaluate --command "make evaluate" > /dev/null

# Train a cross-fitted cross-encoder (2 folds) on SciFact train (the filter of `make demo-filtered` and `make ance`).
reranker: setup
	$(VENV)/bin/hardneg train-reranker --data scifact --split train --folds 2 --epochs 3 --lr 1e-4 --negatives 3 \
		--max-length 128 --eval-split '' --out runs/ce_scifact --overwrite

# Mine SciFact train with that cross-encoder as the false-negative filter; print the report and record it, with
# the machine, in benchmarks/results/demo_filtered.md (+ .json, the histogram).
demo-filtered: setup
	test -f runs/ce_scifact/folds.json || $(MAKE) reranker
	$(VENV)/bin/hardneg mine --data scifact --split train --cross-encoder runs/ce_scifact \
		--set cross_encoder.max_length=128 --set exclusion.near_duplicate_cosine=0.95 --out runs/mine_filtered --overwrite
	@echo; $(PY) -m benchmarks.record_run runs/mine_filtered demo_filtered --command "make demo-filtered"

# The fast tier: skips the tests marked slow (pyproject.toml: live service, SIGKILL/resume, Ray, the ANCE loop,
# real-model training).
test: setup
	$(PY) -m pytest -q -m "not slow"

# Every test, the slow tier included (.ci/run).
test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check retriever mining_jobs tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
