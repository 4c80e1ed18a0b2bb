# `make demo`: set up .venv, run the main job (curate score) on the bundled sample shards, and
# write its HTML report (out/report/index.html).
# `make test`: set up .venv (and Debian's chromium for the report tests) and run the test suite.
# `make test-fast`: the tests not marked slow (5-10 minutes on 2 cores), for a developer's loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.curate-installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast clean browser lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: these wheels lie on local disk (pip's find-links); any other version downloads GBs
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/curate score "tests/data/shards/sample-{000000..000002}.tar" --out out/index \
		--config pipelines/tiny_cpu.yaml --num-cpus 2 --embeddings
	$(BIN)/curate report --index out/index --out out/report

# Headless Chromium for the `curate report` tests (Debian packages chromium, chromium-driver).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; \
	fi

test: $(STAMP) browser lint
	$(BIN)/python -m pytest -q --durations=15

# ruff (configured in pyproject.toml): lint and import order; part of `make test`, so CI runs it.
lint: $(STAMP)
	$(BIN)/ruff check .

# The fast tier for a developer's loop: everything not marked slow (one local Ray cluster and one
# score job shared by the tests; no node kills, no training runs, no browser), 5-10 minutes on
# 2 cores. `make test` is what CI runs. Tests marked gpu are skipped where CUDA is not visible.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache
