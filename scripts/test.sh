#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, builds the aidos binary (integration
# tests under tests/ start real `aidos` processes) and runs every test of the workspace. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 1
fi

# ---- Python environment for interop tests (tritonclient, onnx, onnxruntime from PyPI) -------------------------
# Reused when requirements-test.txt has not changed since it was installed.
if [[ ! -x .venv/bin/python ]] || ! cmp -s requirements-test.txt .venv/.aidos-requirements; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements-test.txt
    cp requirements-test.txt .venv/.aidos-requirements
fi
export AIDOS_PYTHON="$PWD/.venv/bin/python"
# ONNX Runtime's shared library from the onnxruntime wheel, for the `ort` runtime (load-dynamic).
ORT_DYLIB_PATH="$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -n1)"
export ORT_DYLIB_PATH
# -----------------------------------------------------------------------------------------------------------------

# ---- Browser tests (tests/dashboard.rs): Debian's Chromium, driven by playwright-core from npm --------------------
if [[ -z "${AIDOS_CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
# -----------------------------------------------------------------------------------------------------------------

# ---- The dashboard's bundle (committed, embedded in the binary) must be what its sources and lockfile build ------
npm ci --prefix crates/scheduler/dashboard --no-audit --no-fund --loglevel=error
npm run --prefix crates/scheduler/dashboard --silent build >/dev/null
if [[ -n "$(git status --porcelain -- crates/scheduler/dashboard/dist)" ]]; then
    git status --short -- crates/scheduler/dashboard/dist >&2
    echo "crates/scheduler/dashboard/dist is not what its sources build: commit the output of" >&2
    echo "  npm ci --prefix crates/scheduler/dashboard && npm run --prefix crates/scheduler/dashboard build" >&2
    exit 1
fi
# -----------------------------------------------------------------------------------------------------------------

# ---- Gates: formatting and lints (a lint is allowed only with an #[allow] and a comment that says why) ----------
cargo fmt --all --check
# NCCL (aidos-sdk's `nccl` feature: cudarc with dynamic loading, nothing linked at build time) is off in a default
# build; the gates and tests build it in, so it is linted, and every data-parallel test runs its probe (a machine
# without libcuda/libnccl must fall back to the TCP ring without a panic). One feature set: one build.
cargo clippy --workspace --all-targets --features aidos-sdk/nccl -- -D warnings
# -----------------------------------------------------------------------------------------------------------------

# One build: the integration tests build the `aidos` binary themselves, and ONNX Runtime is a default feature, so the
# serving conformance suite (tests/serving.rs) runs on tract, burn and ort in this one pass (ORT_DYLIB_PATH above).
# tests/ddp.rs runs the SDK example as a user's own program (a `process` gang): built as a plain binary first.
cargo build --workspace --example custom_training --features aidos-sdk/nccl
cargo test --workspace --all-targets --features aidos-sdk/nccl
