#!/usr/bin/env bash
# Quick start: builds Signet, starts signet-ca on its embedded default
# (trust domain signet.local, 127.0.0.1:8443, data in ./signet-data), mints an
# X.509-SVID from it with the CLI, shows and verifies it, then stops the CA.
# Set KEEP_RUNNING=1 to leave the CA running in the foreground afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin=target/release

"$bin/signet-ca" run &
ca_pid=$!
trap 'kill -TERM "$ca_pid" 2>/dev/null || true; wait "$ca_pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  [ -S signet-data/admin.sock ] && break
  sleep 0.1
done

out=signet-data/quickstart
"$bin/signet" ca mint --spiffe-id spiffe://signet.local/quickstart/hello --ttl 1h --out "$out"
echo
"$bin/signet" inspect "$out/svid.pem"
echo
"$bin/signet" verify --bundle "$out/bundle.pem" --spiffe-id spiffe://signet.local/quickstart/hello "$out/svid.pem"
echo
echo "The CA's roots are in signet-data/bundle.pem; the SVID, its key and the bundle are in $out/."

if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "signet-ca keeps running (pid $ca_pid); Ctrl-C stops it."
  wait "$ca_pid"
fi
