# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo clean peers

install: $(STAMP)

# torch first (the CPU build from the local wheel), then the project with its test extras
# (convert: transformers for `lodestore convert-model`; torch pinned again so nothing replaces it).
$(STAMP): pyproject.toml setup.py store/_decode.c engine/_kernels.c lodestore/_abi.h
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,serve,convert,ray]' torch==2.13.0
	touch $(STAMP)

# pytest exits 5 when it collects no tests: treat that as a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/python -m tools.demo

# Peer engines for tools/bench_peers.py and tools/bench_scale.py, in their own venv (never the project's dependencies):
# torch first (the CPU build from the local wheel, so nothing pulls a CUDA build), then pylate
# without its dependency resolver plus its runtime deps pinned (newer voyager breaks pylate's
# add_items; sentence-transformers/transformers pinned to what pylate 1.6.0 was released against),
# LanceDB, matplotlib for the plots, and the project itself. Each step may fail on its own
# (an engine that is missing shows as "not installed" in the table); failures are logged.
PEERS := .venv-peers
PBIN := $(PEERS)/bin
PEERS_STAMP := $(PEERS)/.installed

peers: $(PEERS_STAMP)

$(PEERS_STAMP): Makefile pyproject.toml
	$(PY) -m venv $(PEERS)
	$(PBIN)/pip install -q --upgrade pip
	$(PBIN)/pip install -q torch==2.13.0
	-$(PBIN)/pip install -q 'sentence-transformers==5.3.0' 'transformers<=5.3.0' 'ninja==1.11.1.4' 'fastkmeans==0.5.0' 'voyager==2.1.0' torch==2.13.0
	-$(PBIN)/pip install -q --no-deps 'pylate==1.6.0'
	-$(PBIN)/pip install -q 'ujson==5.12.0' sqlitedict 'pandas>=2.2.1' 'datasets>=2.20.0' 'accelerate>=0.31.0' torch==2.13.0
	-$(PBIN)/pip install -q lancedb torch==2.13.0
	$(PBIN)/pip install -q numpy matplotlib py-spy
	$(PBIN)/pip install -q -e . torch==2.13.0
	$(PBIN)/python -c "import torch; assert torch.__version__.startswith('2.13'), torch.__version__"
	touch $(PEERS_STAMP)

clean:
	rm -rf $(VENV) demo-store
