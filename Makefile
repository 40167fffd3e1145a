# soap-bench: setup, tests, lint, benchmarks, demo and paper reproduction.
# Everything runs inside .venv (created by `make install`). GPU users: TORCH_SPEC=torch make install
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

OPTIMIZERS ?= adamw soap shampoo muon kron schedulefree lion adafactor ademamix

.PHONY: claims lineup install test test-all lint format bench-optim bench-dist bench-loss bench-data gpu-check tune-demo study-demo demo demo-quick reproduce rehearsal report clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[harness,dev,postgres,lineup]"
	touch $@

# Two pytest-xdist workers, one torch thread each (tests/conftest.py): on 2 cores the suite's
# processes wait on each other's subprocesses and files about half the time (TEST_WORKERS=0:
# one process, as before).
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-all: install
	$(PY) -m pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-optim: install
	$(PY) -m scripts.bench.optimizer

bench-dist: install
	$(PY) -m scripts.bench.optimizer --procs 1 2 --only soap shampoo muon

bench-loss: install
	$(PY) -m scripts.bench.loss

bench-data: install
	$(PY) -m scripts.bench.data

# Everything GPU-specific in one command (<= 10 min on one GPU): results/bench/gpu_check_<gpu>.txt
gpu-check: install
	$(PY) -m scripts.gpu_check

demo: install
	$(PY) -m scripts.demo --report-out results/demo

# AdamW and SOAP tuned by coordinate descent (3 axes each; 2 workers sharing one SQLite study) in
# the demo's regime, then compared at their tuned settings (3 seeds, schedule fractions): the
# tuning phase of the protocol engine (scripts/experiments/protocol.py).
tune-demo: install
	OMP_NUM_THREADS=1 $(PY) -m scripts.reproduce demo --tune full --tune-space demo --tune-budget 13 \
		--tune-workers 2 --jobs 2 --optimizers adamw soap --best-seeds 1 2 --fractions 0.5 0.75 \
		--out results/tune-demo
	$(PY) -m scripts.tune_report results/tune-demo/tune

# Saving against scale on this machine: configs/study/cpu_ladder.yaml (3 sizes x 2 batches, every
# experiment at 20 tokens per parameter), AdamW and SOAP, an LR grid each, 2 seeds at each best
# LR, 2 schedule fractions; 2 runs at once.
study-demo: install
	$(PY) -m scripts.reproduce --study cpu_ladder --gpus 1 --jobs 2 --optimizers adamw soap \
		--lrs 0.00316 0.01 0.0316 --extend 2 --fractions 0.5 0.75 --best-seeds 1 \
		--out results/study-demo train.compile=true

# The paper's claims on this machine (configs/study/claims.yaml, claims as data in
# configs/claims/paper.yaml): both batch regimes through the whole protocol, the frequency
# ladder and the variants at the small batch's best LRs, 3 seeds; then the study report, which
# opens with the scorecard: results/claims/report/report.md. ~25 min on 2 cores.
claims: install
	$(PY) -m scripts.reproduce --study claims --gpus 1 --jobs 2 --optimizers adamw shampoo soap --runoff 2 \
		--lrs 0.00316 0.01 0.0316 --extend 2 --fractions 0.5 0.75 --best-seeds 1 2 \
		--out results/claims train.compile=true

# The field's optimizers under the demo's protocol (LR sweep with edge extension, 3 seeds at the
# best, schedule fractions), then the leaderboard: results/lineup (~23 min on 2 cores). Add yours:
# make lineup OPTIMIZERS="adamw soap yours" (with configs/optimizer/yours.yaml).
lineup: install
	$(PY) -m scripts.demo --optimizers $(OPTIMIZERS) --fraction-seeds 0 --out results/runs/lineup \
		--report-out results/lineup

demo-quick: install
	$(PY) -m scripts.demo --quick --out results/runs/demo-quick

report: install
	$(PY) -m scripts.report $(or $(RUNS),results/runs/demo)

reproduce: install
	$(PY) -m scripts.reproduce $(or $(PRESET),paper_360m_large_batch)

rehearsal: install
	$(PY) -m scripts.reproduce rehearsal --gpus 2

clean:
	rm -rf results/runs .pytest_cache .ruff_cache
