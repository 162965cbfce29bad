# Sightline: `make demo` and `make test` do all set-up on a fresh machine.
# The user path: `make train quantize deploy`, then `make serve` (later issues add the last three).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

CONFIG   ?= training/configs/shapes.yaml
SET      ?=
ARTIFACT ?= artifacts/latest
CIFAR    ?= ../shared/datasets/cifar10-train-jpg.tar.gz
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install train evaluate demo test lint clean distclean bench-train

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,serve,dev]'
	rm -f $(VENV)/.installed-* && touch $@

train: install
	$(BIN)/python -m training train --config $(CONFIG) $(addprefix --set ,$(SET))

evaluate: install
	$(BIN)/python -m training evaluate $(ARTIFACT)

demo: train evaluate
	@echo "demo: artifact in $$(readlink -f $(ARTIFACT)); card: $(ARTIFACT)/card.json"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check training serving tests

# CIFAR-10 accuracy in bounded time on this machine's CPU (see docs/benchmarks.md).
bench-train: install
	mkdir -p artifacts
	$(BIN)/python -m training train --config training/configs/cifar10_fast.yaml \
	    --set data.path=$(CIFAR) $(addprefix --set ,$(SET)) 2>&1 | tee artifacts/bench-train.log

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
