# vpnlab: `make lab-up` and `make test` work from a fresh clone on Debian 12, as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
VPNLAB := $(VENV)/bin/vpnlab
LAB_TOPOLOGY ?= topologies/hub-spoke.yml
LAB_NAME ?= hub-spoke
PYTEST_ARGS ?=

.PHONY: help venv docker image lab-up lab-down test test-unit bench clean

help:
	@echo "make lab-up     set up the host (venv, Docker, image) and deploy $(LAB_TOPOLOGY)"
	@echo "make lab-down   destroy that lab"
	@echo "make test       set up the host, then run every test (unit, root, uml, e2e)"
	@echo "make test-unit  unit tests only (no root, no Docker)"
	@echo "make image      build the node image if node-image/ changed"
	@echo "make bench      run the benchmarks (tables on stdout)"
	@echo "make clean      remove the venv, caches and vpnlab images"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || { [ "$$(id -u)" = 0 ] && scripts/setup-host.sh; } \
	  || { echo "python3-venv is missing: run 'make docker' as root (or apt-get install python3-venv)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

docker:
	scripts/setup-host.sh

image: docker venv
	$(VPNLAB) image

lab-up: docker venv image
	$(VPNLAB) deploy $(LAB_TOPOLOGY)

lab-down: venv
	$(VPNLAB) destroy $(LAB_NAME)

test: docker venv image
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

bench: docker venv image
	@set -e; for b in benchmarks/*.py; do echo "== $$b"; $(VENV)/bin/python $$b; done

clean:
	-test -x $(VENV)/bin/python && $(VENV)/bin/python -c "from vpnlab.image import remove_images; remove_images(keep_current=False)" 2>/dev/null
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
