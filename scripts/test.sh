#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first.
# Usage: scripts/test.sh   (from anywhere; works on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# openssl is the independent verifier the integration tests call.
if ! need openssl; then
  echo "==> installing openssl (independent certificate verifier for the tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openssl; else sudo apt-get update -qq && sudo apt-get install -y -qq openssl; fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> building the binaries the integration tests start"
cargo build --workspace --bins
echo "==> running the tests"
cargo nextest run --workspace --no-fail-fast "$@"
# nextest does not run doctests.
cargo test --workspace --doc --quiet
