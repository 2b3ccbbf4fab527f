# The project's two commands (see README.md). Both are idempotent: re-running them only re-checks.
#   make demo   installs caap-lens and runs the main job, `caap-lens explain`, on the bundled model
#   make test   installs what the tests need and runs them (fast suite, slow-marked tests, docs build)
# constraints.txt pins torch to 2.13.0 so pip takes the local CPU wheel instead of a CUDA build.

PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE = 1

.PHONY: install install-dev demo test test-fast test-slow docs bench system-deps

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e .

# Debian packages used by tests: Fashion-MNIST (scene data) and Chromium (report render test).
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing="$$missing dataset-fashion-mnist"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "system-deps: not root or no apt-get; tests needing Fashion-MNIST or Chromium will skip"; fi

install-dev: install system-deps
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	caap-lens explain

test-fast: install-dev
	$(PYTHON) -m pytest -q -p no:cacheprovider

# pytest exits 5 when no test is marked slow; that is not a failure. Every other code is.
test-slow: install-dev
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slow || [ $$? -eq 5 ]

# The documentation site, warnings as errors (mkdocs.yml sets strict: true as well).
docs: install-dev
	$(PYTHON) -m mkdocs build --strict -d site

test: test-fast test-slow docs

bench: install
	$(PYTHON) benchmarks/bench_caap.py
