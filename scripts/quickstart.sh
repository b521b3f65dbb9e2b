#!/usr/bin/env bash
# Quick start: builds Signet, starts signet-ca on its embedded default
# (trust domain signet.local, 127.0.0.1:8443, data in ./signet-data), mints an
# X.509-SVID from it with the CLI, shows and verifies it; then starts a node
# agent beside it (join token, pinned bundle), registers this shell's user as
# a workload, and fetches its SVID over the SPIFFE Workload API from the
# default socket (/tmp/signet-agent/public/api.sock); as root, it also fetches
# one as the unprivileged user nobody (uid 65534). Stops both.
# Set KEEP_RUNNING=1 to leave them running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin=target/release

"$bin/signet-ca" run &
ca_pid=$!
agent_pid=
stop() {
  [ -n "$agent_pid" ] && { kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; }
  kill -TERM "$ca_pid" 2>/dev/null || true; wait "$ca_pid" 2>/dev/null || true
}
trap stop EXIT

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

echo
echo "==> a node agent, and this user as a workload"
node=quickstart-node-$$
token=$("$bin/signet" ca token create --node "$node" --ttl 10m | head -1)
"$bin/signet" ca entry create --spiffe-id "spiffe://signet.local/quickstart/user-$(id -u)" \
  --parent-node "$node" --selector "unix:uid:$(id -u)" --ttl 1h >/dev/null
rm -rf signet-agent-data
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  "$bin/signet" ca entry create --spiffe-id spiffe://signet.local/quickstart/nobody \
    --parent-node "$node" --selector unix:uid:65534 --ttl 1h >/dev/null
fi
"$bin/signet-agent" run --join-token "$token" --trust-bundle signet-data/bundle.pem &
agent_pid=$!
# The agent's and the CLI's default: /tmp/signet-agent/public/api.sock.
for _ in $(seq 1 100); do
  [ -S /tmp/signet-agent/public/api.sock ] && break
  sleep 0.1
done
# Retries while the agent syncs its entries; only the last attempt's error shows.
fetch() {
  for _ in $(seq 1 49); do
    "$@" 2>/dev/null && return 0
    sleep 0.2
  done
  "$@"
}
fetch "$bin/signet" agent svid fetch --out signet-data/quickstart-workload
"$bin/signet" verify --bundle signet-data/quickstart-workload/bundle.pem signet-data/quickstart-workload/svid.pem
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  echo
  echo "==> the same default socket, as the unprivileged user nobody"
  fetch setpriv --reuid 65534 --regid 65534 --clear-groups "$PWD/$bin/signet" agent svid fetch
fi
"$bin/signet" ca agent list

if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "signet-ca (pid $ca_pid) and signet-agent (pid $agent_pid) keep running; Ctrl-C stops them."
  wait "$ca_pid"
fi
