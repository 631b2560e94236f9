# Everything a fresh machine needs, in two commands:
#   make demo   - simulated WXT530 -> agent -> fleet server (and the local broker when one answers)
#   make test   - the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean soak

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fleet,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quanedge demo

test: $(STAMP)
	@command -v mosquitto >/dev/null || echo "note: mosquitto not installed; run: apt-get install -y mosquitto mbpoll"
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	BIN=$(BIN) bash .ci/lint

bench: $(STAMP)
	$(BIN)/python -m bench.buffer

soak: $(STAMP)
	QUANEDGE_KILL_CYCLES=500 $(BIN)/python -m pytest -q tests/test_e2e_crash.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
