# segcourse: students need `make student`, instructors `make instructor`, CI `make test`.
# Everything else is a thin wrapper around the `segcourse` command line. Every target runs the
# tools of .venv without activating it (`source .venv/bin/activate` to type them yourself).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The exact PyTorch builds this machine and CI use (the code also supports torch 2.11 /
# torchvision 0.26, what the GPU machine has).
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
JOBS   ?= 2
# nbgrader's exchange (release_assignment, fetch, submit, collect, feedback) for a course on one
# machine; point it at a folder every student can write to, e.g. EXCHANGE=/srv/nbgrader/exchange.
EXCHANGE ?= $(or $(SEGCOURSE_EXCHANGE),autograder/exchange)
# Commands typed in JupyterLab's terminals, and the ones nbgrader starts, come from .venv.
LABENV := PATH="$(abspath $(BIN)):$$PATH" SEGCOURSE_EXCHANGE="$(abspath $(EXCHANGE))"
# The students' JupyterLab hides nbgrader's instructor tools (autograder/student_lab/).
STUDENTCONF := $(abspath autograder/student_lab)$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))
# JupyterLab refuses to run as root (containers, CI machines) without this flag.
LABFLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup system student selfgrade instructor lab exchange test test-fast lint format release \
	grade references bench doctor clean

# `make setup` is idempotent: the stamp file is newer than pyproject.toml after a successful
# install, so a second run does nothing.
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# System packages: bubblewrap, the sandbox every submission is graded in, and PostgreSQL, the
# gradebook server the tests start (tests/test_gradebook_pg.py; `segcourse grade --db`).
# Installed with apt when this runs as root on Debian/Ubuntu (CI does); otherwise it says what
# to install.
system:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else \
	    echo "bubblewrap is missing: install it (sudo apt-get install bubblewrap) to grade in a sandbox"; \
	  fi; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "postgresql is missing: install it (sudo apt-get install postgresql) to test the PostgreSQL gradebook"; \
	  fi; }

# Students: the student versions (no solutions, no hidden tests, the visible tests' references)
# in student/, opened in JupyterLab at 00_setup. Your notebooks there are never overwritten.
student: setup
	$(BIN)/python -m segcourse.student || echo "(a notebook without student version is skipped: see above)"
	$(LABENV) JUPYTER_CONFIG_PATH="$(STUDENTCONF)" $(BIN)/jupyter lab $(LABFLAGS) --notebook-dir=student \
		--LabApp.default_url=/lab/tree/00_setup/00_setup.ipynb

# Self-learners: grade your student/NOTEBOOK/NOTEBOOK.ipynb with the hidden tests (a score, not
# the tests): make selfgrade NOTEBOOK=04_transposed_conv (no NOTEBOOK: every notebook there).
selfgrade: setup
	$(BIN)/python -m segcourse.student --grade $(NOTEBOOK)

# Instructors: the instructor notebooks (solutions and hidden tests) with nbgrader's Formgrader,
# which finds the course through ./nbgrader_config.py. `make lab` is the same.
instructor: setup exchange
	$(BIN)/segcourse doctor || true
	$(LABENV) $(BIN)/jupyter lab $(LABFLAGS) --notebook-dir=.

lab: instructor

# The exchange folder: writable by everyone, sticky like /tmp (nbgrader's own convention).
exchange:
	mkdir -p "$(EXCHANGE)"
	chmod 1777 "$(EXCHANGE)" 2>/dev/null || echo "could not chmod $(EXCHANGE): make it writable by the students"

# Units and end-to-end tests in parallel, a test file per worker (so a module's expensive fixture,
# such as the autograding batch, runs once; xdist's loadgroup split parametrized tests of one group),
# then every notebook with nbval (all cells of one notebook stay on one worker; notebooks/conftest.py
# keeps nbval from losing a busy cell's output messages on a loaded machine).
# One thread per test process: two pytest workers on two cores must not oversubscribe them.
test: export OMP_NUM_THREADS = 1
test: setup system
	$(BIN)/python -m ruff check segcourse tests notebooks autograder/nbgrader_config.py
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax \
		--nbval-kernel-startup-timeout 300 notebooks

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

# Leaves student/ (students' work) and autograder/exchange alone.
clean:
	rm -rf autograder/release autograder/autograded autograder/feedback autograder/gradebook.db
