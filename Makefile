# cd4ml: `make demo` runs the whole job on the embedded sample data; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= work

.PHONY: demo test lint bench clean test-tools wrk

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cd4ml run --workdir $(WORKDIR)
	@echo "Sales forecast page and API: http://127.0.0.1:5005  (Ctrl-C stops the gateway)"
	@echo "The closed loop (drift, retraining, canary, rollback): $(BIN)/cd4ml simulate --days 30"
	$(BIN)/cd4ml serve --workdir $(WORKDIR) --port 5005

test: $(STAMP) test-tools
	$(BIN)/pytest -n 2 --dist loadgroup

# Browser tests use Debian's Chromium (Playwright cannot download its own browser here); the
# alerting test runs the real Prometheus + Alertmanager pair; outage tests kill a redis-server of their own.
test-tools:
	@test -x /usr/bin/chromium && command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null \
	  && command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus \
	    prometheus-alertmanager redis-server)

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP) wrk
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(WORKDIR) test-artifacts .pytest_cache
