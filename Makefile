# natsched: the two commands are `make run` and `make test`; both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell $(PYTHON) -c 'import hashlib,sys;print(hashlib.sha1(open("pyproject.toml","rb").read()).hexdigest()[:12])' 2>/dev/null)

.PHONY: run test lint unit integration e2e bench chaos soak cluster venv clean schemas

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: venv            ## the whole system: nats-server, PostgreSQL, moto, every service, simulated nodes, the web console
	$(PY) -m services.devstack

cluster: venv        ## a 3-node NATS cluster (routes, replicated JetStream) on 4222-4224, until Ctrl-C
	$(PY) -m services.devstack.cluster

lint: venv
	$(VENV)/bin/ruff check services schemas tests
	$(VENV)/bin/ruff format --check services schemas tests
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: venv
	$(VENV)/bin/pytest -q tests/integration

e2e: venv            ## the web console in headless Chromium (/usr/bin/chromium: apt-get install -y chromium)
	$(VENV)/bin/pytest -q tests/e2e

test: lint           ## ruff, mypy, then every unit, integration and e2e (browser) test against real servers
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

bench: venv          ## benchmarks; results in bench-results/ (JSON, markdown, PNG); BENCH="replace" runs only those
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m tests.bench $(BENCH)

chaos: venv          ## fault scenarios under load, checked by the invariant checker; table in bench-results/chaos.md; ROWS="living" (or words of row names) runs only those rows
	$(PY) -m tests.chaos $(ROWS)

soak: venv           ## an accelerated month (issue #21): JOBS=1000000 RATE=175 EVERY=100000 (about 1 h 40 min on 2 cores; docs/OPERATIONS.md "Soak"); bench-results/soak.md, .png, .json
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m tests.soak --jobs $(or $(JOBS),1000000) --rate $(or $(RATE),175) --every $(or $(EVERY),100000)

schemas: venv        ## regenerate the JSON Schemas of the wire contract in schemas/json/ (checked by a unit test)
	$(PY) -m schemas.jsonschema

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache
