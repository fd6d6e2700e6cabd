# radflow: `make demo` sets up and runs the pipeline on the demo cohort; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: setup demo test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	@[ -d .dvc ] || $(BIN)/dvc init --quiet --no-scm
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)

# tests/test_browser.py needs Chromium: installed here with apt-get when running as root on a
# Debian-like system; elsewhere those tests skip and say why.
test: setup
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			|| echo "chromium install failed: browser tests will skip"; \
	else echo "no chromium and no root apt-get: tests/test_browser.py will skip"; fi
	$(BIN)/python -m pytest -m "not slow"

test-all: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint

clean:
	rm -rf data/raw data/interim data/anonymised data/processed data/split models/mri models/ct \
		models/xray reports/* logs .snakemake
