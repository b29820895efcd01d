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

demo: install
	$(VENV)/bin/python -m training.demo

test: install
	$(VENV)/bin/python -m pytest -q --durations=15

.PHONY: install demo test
