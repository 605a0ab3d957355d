# The README's first two commands: `make demo` and `make test`.
# Each one sets up everything it needs (a .venv with exactly the versions and hashes of
# requirements/lock.txt, torch being the CPU wheel on local disk) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt
PIP_TOOLS := pip-tools==7.7.0

.PHONY: demo test test-all test-latest venv check-lock lock lock-upgrade bench clean

# A new venv each time the lock or pyproject.toml changes, so nothing outside the lock stays.
# --require-hashes: every package (dependencies too) at its locked version, from a file whose
# hash is in the lock; torch==2.13.0+cpu matches only the CPU wheel on disk, never a CUDA build.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

check-lock: $(STAMP)
	$(PY) .ci/check_lock.py

demo: $(STAMP)
	$(VENV)/bin/caffe-compat demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# The suite against the newest releases pyproject.toml's ranges allow (torch stays the CPU
# wheel: the newest torch is a CUDA build of several GB), in a venv of its own: drift shows
# here the day a release lands, before anyone refreshes the lock.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	echo 'torch==2.13.0' > .venv-latest/torch-cpu.txt
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager \
		-c .venv-latest/torch-cpu.txt -e '.[dev]'
	.venv-latest/bin/python .ci/check_lock.py --drift
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider

# Re-resolve the lock from pyproject.toml (+ its [dev] extra) and requirements/lock.in, with the
# hashes of every file of each pinned version. `make lock` keeps the versions already locked and
# only adds, drops or moves what pyproject.toml's changes require (after a merge);
# `make lock-upgrade` takes the newest versions the ranges allow (a deliberate refresh).
lock lock-upgrade:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(PIP_TOOLS)
	.venv-lock/bin/pip-compile -q $(if $(filter lock-upgrade,$@),--upgrade) --generate-hashes --allow-unsafe \
		--strip-extras --extra dev --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements/lock.in
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-latest .venv-lock demo_out .pytest_cache
