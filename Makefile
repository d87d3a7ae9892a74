# FlashPack: `make demo` and `make test` do all set-up themselves (venv, dependencies, build).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
export CARGO_TERM_COLOR := never

.PHONY: all venv build demo test test-rust test-python lint interop bench gpu-check wheel clean

all: build

$(DEPS): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(DEPS)

# Builds the Rust extension (release) and installs the package into the venv, editable.
build: $(DEPS)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet -m bindings/python/Cargo.toml

demo: build
	$(PY) scripts/demo.py

lint:
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo fmt --all --check

test-rust:
	cargo test -p flashpack --quiet

# Bit-exact exchange with PyPI flashpack 0.4.5 (its own venv, .venv-oracle, built by the test).
interop: build
	$(PY) -m pytest bindings/python/tests/test_interop.py -q -rs

test-python: build
	$(PY) -m pytest bindings/python/tests -q -rs

test: lint test-rust test-python

# Side-by-side load/pack benchmark against the peers and the machine's ceilings (BENCHMARKS.md).
bench: build
	$(PY) scripts/bench.py $(BENCH_ARGS)
	$(PY) scripts/bench_hf.py --out $${OUT:-.bench}/hf --work .bench/hf-models $(BENCH_HF_ARGS)

# A wheel to carry to a machine without a Rust toolchain (the GPU machine): dist/*.whl.
wheel: $(DEPS)
	$(VENV)/bin/maturin build --release --quiet -m bindings/python/Cargo.toml -o dist
	$(PY) -m pip download --quiet --no-deps -d dist/oracle flashpack==0.4.5 accelerate==1.15.0 click || \
		echo "flashpack 0.4.5 not downloadable: its bench rows will be skipped on the GPU machine"

# One prepared run for a GPU machine: CUDA tests, then the bench; logs and chart under $$OUT.
gpu-check:
	bash scripts/gpu-check.sh

clean:
	cargo clean
	rm -rf $(VENV) .venv-oracle
