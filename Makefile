# segcourse: the two commands a person needs are `make lab` and `make test`.
# Everything else is a thin wrapper around the `segcourse` command line.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The exact PyTorch builds this machine and CI use (the code also supports torch 2.11 /
# torchvision 0.26, what the GPU machine has).
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: setup system lab test test-fast lint format release grade references bench doctor clean

# `make setup` is idempotent: the stamp file is newer than pyproject.toml after a successful
# install, so a second run does nothing.
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# System packages: bubblewrap, the sandbox every submission is graded in. Installed with apt
# when this runs as root on Debian/Ubuntu (CI does); otherwise it says what to install.
system:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else \
	    echo "bubblewrap is missing: install it (sudo apt-get install bubblewrap) to grade in a sandbox"; \
	  fi; }

lab: setup
	$(BIN)/segcourse doctor || true
	$(BIN)/jupyter lab --notebook-dir=.

# Units and end-to-end tests in parallel (tests sharing an expensive fixture share a worker),
# then every notebook with nbval (all cells of one notebook stay on one worker).
# One thread per test process: two pytest workers on two cores must not oversubscribe them.
test: export OMP_NUM_THREADS = 1
test: setup system
	$(BIN)/python -m ruff check segcourse tests notebooks autograder/nbgrader_config.py
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup tests
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax notebooks

test-fast: setup
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow" tests

lint: setup
	$(BIN)/python -m ruff check segcourse tests notebooks autograder/nbgrader_config.py

format: setup
	$(BIN)/python -m ruff format segcourse tests

release: setup
	$(BIN)/segcourse release

# make grade SUBMITTED=path/to/submitted [JOBS=4]
SUBMITTED ?= autograder/submitted
grade: setup system
	$(BIN)/segcourse grade $(SUBMITTED) --jobs $(JOBS) --out grades.csv

references: setup
	$(BIN)/segcourse references

bench: setup
	$(BIN)/segcourse bench

doctor: setup
	$(BIN)/segcourse doctor

clean:
	rm -rf autograder/release autograder/autograded autograder/feedback autograder/gradebook.db
