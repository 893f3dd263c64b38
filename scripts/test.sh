#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, builds the aidos binary (integration
# tests under tests/ start real `aidos` processes) and runs every test of the workspace. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 1
fi

# ---- Python environment for tests: none needed yet -------------------------------------------------------------
# When tests start needing Python (kernels, serving), create the venv here, e.g.:
#   python3 -m venv .venv
#   .venv/bin/pip install --upgrade pip
#   .venv/bin/pip install -r requirements-test.txt
#   export AIDOS_PYTHON="$PWD/.venv/bin/python"
# -----------------------------------------------------------------------------------------------------------------

cargo build --bin aidos
cargo test --workspace --all-targets
