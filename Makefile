# The two commands a newcomer needs: `make demo` and `make test`.
# Both bootstrap .venv on first use (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunewise demo --out runs/demo

# Debian's Chromium for tests/test_browser.py (Playwright drives it; `playwright install` is never run).
# Skip the browser tests (and this step) with: make test PYTEST_ARGS='-m "not browser"'
browser:
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium fonts-dejavu-core)

# The tests, then every phase notebook in order with its committed defaults (nbval; a few
# minutes on a CPU; they write into a throw-away run folder, see notebooks/conftest.py).
test: $(STAMP) $(if $(findstring not browser,$(PYTEST_ARGS)),,browser)
	$(PY) -m pytest --nbval-lax $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/cache.py
	$(PY) benchmarks/stop_rules.py
	$(PY) benchmarks/postmortem.py
	$(PY) benchmarks/workers.py --trials 40 --epochs 4
	$(PY) benchmarks/phases.py

clean:
	rm -rf runs .pytest_cache tests/artifacts
