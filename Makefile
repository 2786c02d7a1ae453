# The two commands a user needs: `make demo` and `make test`. Everything else here serves them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
PG_BINDIR ?= /usr/lib/postgresql/15/bin
LAB_SCALE ?= small

# The checkout is the collection pgmigrate.pipeline: this link makes it visible on the collections path that
# ansible.cfg (and molecule's config) name, so `make demo` and `make test` need no install step.
COLLECTIONS := $(CURDIR)/.cache/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/pgmigrate/pipeline

export PATH := $(BIN):$(PATH)
export PG_BINDIR
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0

LAB_INVENTORIES := -i inventories/lab/staging -i inventories/lab/production

.PHONY: help venv lab lab-down demo test bench lint yamllint ansible-lint ruff sanity pytest molecule clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	@test -x $(PG_BINDIR)/initdb || { echo "PostgreSQL server binaries not found in $(PG_BINDIR) (set PG_BINDIR)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

venv: $(STAMP) $(COLLECTION_LINK) ## Create .venv with the pinned toolchain and link the checkout as the collection.

lab: venv ## Start the lab: staging (55432) and production (55433) clusters with data.
	ansible-playbook $(LAB_INVENTORIES) playbooks/lab.yml -e lab_scale=$(LAB_SCALE)

lab-down: venv ## Stop the lab clusters and remove their data.
	ansible-playbook $(LAB_INVENTORIES) playbooks/lab.yml -e lab_state=absent

demo: lab ## Start the lab and release: lab staging, then (only if staging succeeded) lab production.
	ansible-playbook $(LAB_INVENTORIES) playbooks/release.yml

test: lint sanity pytest molecule ## Every check: yamllint, ansible-lint, ruff, ansible-test sanity, pytest, molecule.

lint: yamllint ansible-lint ruff

yamllint: venv
	yamllint --strict .

ansible-lint: venv
	ansible-lint --profile production --strict

ruff: venv
	ruff check .
	ruff format --check .

# ansible-test sanity on the built collection (the artifact users install); tools/sanity.py says which tests.
sanity: venv
	python tools/sanity.py

# Two workers (the machine has two cores and one pytest process keeps about one busy); each takes whole
# test files, so a file's shared fixtures (the fault suite's one playbook run) are built once.
PYTEST_WORKERS ?= 2

pytest: venv
	pytest -n $(PYTEST_WORKERS) --dist loadfile

molecule: venv
	molecule test --all

bench: venv ## Benchmark at lab scale large (own cluster on 56116, removed after): bench/results.{json,md}. Not in test.
	python bench/run.py --scale $(or $(BENCH_SCALE),large)

clean: lab-down ## Stop the lab and remove the virtualenv.
	rm -rf $(VENV) .cache
