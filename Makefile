# Two entry points (README): `make demo` and `make test`. Both create .venv on first use.
PY ?= python3.11
VENV := .venv
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Second venv for the MineRL adapter's tests (tests/with_minerl): the real minerl==0.4.4 Python package, installed
# without its Java build (READTHEDOCS=1 makes its setup.py skip gradle; old setuptools/wheel let gym 0.19's sdist
# build). MineRL needs numpy<1.24 and gym<0.20, so it cannot share .venv. ~40 s from scratch.
MINERL_VENV := .venv-minerl
$(MINERL_VENV)/.installed:
	test -x $(MINERL_VENV)/bin/python || $(PY) -m venv $(MINERL_VENV) || python3 -m venv $(MINERL_VENV)
	$(MINERL_VENV)/bin/pip install -q "setuptools==65.5.0" "wheel==0.38.4"
	READTHEDOCS=1 $(MINERL_VENV)/bin/pip install -q --no-build-isolation "gym==0.19.0" "minerl==0.4.4" \
		"numpy<1.24" "opencv-python<4.12" "pyarrow<26" "gymnasium==1.4.0" "lxml" "pytest==9.2.0" "pytest-timeout==2.4.0"
	touch $@

install-minerl: $(MINERL_VENV)/.installed

demo: install
	$(VENV)/bin/python -m training.demo

test: install install-minerl
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q --durations=15
	$(MINERL_VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=5 tests/with_minerl

.PHONY: install install-minerl demo test
