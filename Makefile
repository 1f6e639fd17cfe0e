# The README's two commands: `make run` (demo) and `make test`. Both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Parallel workers (pytest-xdist): most of the suite waits on a broker, consumer groups
# and subprocesses, so 4 workers on 2 cores; each worker starts its own broker. Serial
# groups: tests/conftest.py. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 4

.PHONY: setup tools run test test-slow soak bench bench-ab bench-gpu device-check bench-replicas bench-serving docs lint fmt clean

setup: $(STAMP)

# torch==2.13.0 first: its CPU wheel is what the pyproject range then accepts as-is
# (a looser request would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# promtool and prometheus for the operations tests, tmux for the demo view's terminal
# test: Debian's packages, when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (prometheus, promtool)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	    -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v tmux >/dev/null 2>&1 || { \
	  echo "installing Debian's tmux package"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	    -y -qq --no-install-recommends tmux >/dev/null; }

run: setup
	$(BIN)/stream-trainer demo

test: setup tools
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=10 $(PYTEST_ARGS)

test-slow: setup tools
	$(BIN)/python -m pytest -m slow -s $(PYTEST_ARGS)

# 10 minutes at 5k events/s through the broker: RSS, errors, lag (not a CI test).
soak: setup
	$(BIN)/python scripts/soak.py --duration 600 --rate 5000

# Every CPU figure of BENCHMARKS.md in one run (~12 min): the client limit, River and
# Vowpal Wabbit, our trainer core, the daemon end to end, latency at fixed rates, RSS;
# then /predict while the daemon trains (BENCH_SERVING=0 leaves that out).
BENCH_ARGS ?=
BENCH_SERVING ?= 1
BENCH_SERVING_ARGS ?=
bench: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python scripts/bench.py --out BENCHMARKS.md $(BENCH_ARGS)
	@if [ "$(BENCH_SERVING)" != 0 ]; then \
	  $(BIN)/python scripts/bench_serving.py --out BENCHMARKS.md $(BENCH_SERVING_ARGS); fi

# /predict on one event and on batches of 256 while the daemon trains at 5k events/s,
# the training rate beside it, the train-to-serve age; then all of it again with serving
# on a thread of the daemon's, for comparison (~5 min): its BENCHMARKS.md section.
bench-serving: setup
	$(BIN)/python scripts/bench_serving.py --out BENCHMARKS.md $(BENCH_SERVING_ARGS)

# The same benchmark on BASE and on this tree, alternating, medians side by side (an A/B
# that the machine's noise cannot fake): make bench-ab BASE=<commit> [BENCH_AB_ARGS=...]
BASE ?= HEAD~1
BENCH_AB_ARGS ?=
bench-ab: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python scripts/bench_ab.py --base $(BASE) $(BENCH_AB_ARGS)

# The GPU figures (torch and numpy only): fills the GPU section of BENCHMARKS.md.
bench-gpu: setup
	$(BIN)/python scripts/bench_gpu.py --out BENCHMARKS.md $(BENCH_ARGS)

# The GPU device check (docs/gpu.md), ~3 minutes, no network and no setup: the CUDA tests
# (graphs on batches of varying size, captures on two threads at once, checkpoints between
# CPU and GPU, ...), then bench_gpu.py on fixed and varying batches, graphs on and off;
# figures and the tests' outcome in DEVICE_CHECK_OUT. Uses the torch already installed.
DEVICE_CHECK_OUT ?= device-check.md
device-check:
	bash scripts/device_check.sh $(DEVICE_CHECK_OUT)

bench-replicas: setup
	$(BIN)/python scripts/bench_replicas.py --out BENCHMARKS.md $(BENCH_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; make test builds it with --strict.
# The generated references first: scripts/gen_docs.py rewrites docs/reference/ from the code.
docs: setup
	$(BIN)/python scripts/gen_docs.py
	$(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check stream_trainer tests scripts
	$(BIN)/ruff format --check stream_trainer tests scripts
	$(BIN)/python -m mypy  # stream_trainer/, as pyproject.toml's [tool.mypy] says

fmt: setup
	$(BIN)/ruff format stream_trainer tests

clean:
	rm -rf $(VENV) .demo checkpoints site .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
