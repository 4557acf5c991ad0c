# Set-up is idempotent: the venv is (re)built only when a pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.metareg-installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# torch and torchvision are pinned to the pair this project is tested with (they must match).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test lint bench clean dist

L2L_INSTALL := plugins/metareg-learn2learn/metareg_learn2learn/install.py

$(STAMP): pyproject.toml metapackage/pyproject.toml $(PLUGINS) $(L2L_INSTALL)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	# The core used to be the distribution `metareg` (it is metareg-core now; `metareg` is metapackage/):
	# replaced after the core was installed, an old editable install of it would take bin/metareg with it.
	$(PY) -m pip uninstall -q -y metareg 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev,export,faiss,serve,shards]' $(foreach p,$(PLUGINS),-e $(dir $(p))) -e metapackage
	# tests/test_serve_page.py drives Debian's chromium through Playwright (never Playwright's own browser
	# download); without chromium (not root, no apt) that test skips and says why.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium >/dev/null)) \
	  || echo "chromium not installed: tests/test_serve_page.py will skip (sudo apt-get install chromium)"; }
	# learn2learn 0.2.0 does not build from PyPI on Python >= 3.11: the plugin's install command rebuilds it
	# (a pip user runs the same), pins numpy < 2 for qpth and re-resolves what needs numpy >= 2.
	$(PY) -m metareg_learn2learn.install --cache .cache/learn2learn
	touch $(STAMP)

setup: $(STAMP)

## The main job: train prototypical networks on the embedded glyphs dataset and report test accuracy.
run: setup
	$(VENV)/bin/metareg run --strategy prototypicalnetworks

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check metareg plugins tests scripts

## Wheels of metareg-core, the metareg metapackage and every first-party plugin, into dist/:
## then `pip install --find-links dist metareg` in any environment that has torch (or can fetch it).
dist: setup
	$(PY) scripts/build_dists.py dist

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info metapackage/*.egg-info
