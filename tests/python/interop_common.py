"""What the interop clients in this directory share: stubs generated at run
time, a relay that records the HTTP/2 request headers a client really sends,
certificate helpers, and the JSON report each client prints.

The Rust integration test (tests/tests/interop) runs the clients and judges
their reports; the clients themselves only check what a client would check
before using a credential (that the key fits the certificate).
"""

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKLOAD_PROTO_DIR = os.path.join(REPO, "proto", "proto")

# The Workload API refuses calls without this header (SPIFFE Workload API
# standard, section 6.2); py-spiffe adds it, raw clients must.
WORKLOAD_HEADER = ("workload.spiffe.io", "true")
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_FETCH_X509 = "/SpiffeWorkloadAPI/FetchX509SVID"
SDS_FETCH = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"

# Long enough for the agent to see a new entry and have its SVID signed.
DEFAULT_TIMEOUT = 20.0


def generate_stubs():
    """Generates the Python modules for the standard's workload.proto and our
    minimal SDS proto into a new temporary directory and imports them.

    Returns (workload_pb2, workload_pb2_grpc, sds_pb2, sds_pb2_grpc).
    """
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="signet-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for include, proto in (
        (WORKLOAD_PROTO_DIR, "workload.proto"),
        (HERE, "sds_minimal.proto"),
    ):
        args = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(include, proto),
        ]
        if protoc.main(args) != 0:
            fail(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    import workload_pb2
    import workload_pb2_grpc
    import sds_minimal_pb2
    import sds_minimal_pb2_grpc

    return workload_pb2, workload_pb2_grpc, sds_minimal_pb2, sds_minimal_pb2_grpc


class RequestHeaders:
    """Decodes the header blocks of the client-to-server half of an HTTP/2
    connection (RFC 9113 sections 3.4, 4.1, 6.2, 6.10) and keeps the request
    headers of each stream, as the server receives them."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    HEADERS, CONTINUATION = 0x1, 0x9
    END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20

    def __init__(self):
        import hpack

        self._decoder = hpack.Decoder()
        self._buffer = b""
        self._preface_seen = False
        self._block = None  # (stream id, fragments) while a block is open
        self._lock = threading.Lock()
        self.streams = []  # [(stream id, [(name, value)])]

    def feed(self, data):
        with self._lock:
            self._buffer += data
            if not self._preface_seen:
                if len(self._buffer) < len(self.PREFACE):
                    return
                if not self._buffer.startswith(self.PREFACE):
                    raise ValueError("not an HTTP/2 client connection")
                self._buffer = self._buffer[len(self.PREFACE):]
                self._preface_seen = True
            while len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[0:3], "big")
                if len(self._buffer) < 9 + length:
                    return
                kind, flags = self._buffer[3], self._buffer[4]
                stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
                payload = self._buffer[9:9 + length]
                self._buffer = self._buffer[9 + length:]
                self._frame(kind, flags, stream, payload)

    def _frame(self, kind, flags, stream, payload):
        if kind == self.HEADERS:
            pad = 0
            if flags & self.PADDED:
                pad = payload[0]
                payload = payload[1:]
            if flags & self.PRIORITY:
                payload = payload[5:]
            if pad:
                payload = payload[:-pad]
            self._block = (stream, [payload])
        elif kind == self.CONTINUATION and self._block is not None:
            self._block[1].append(payload)
        else:
            return
        if flags & self.END_HEADERS:
            stream_id, fragments = self._block
            self._block = None
            # Every block goes through the decoder, trailers included, so
            # that its dynamic table stays in step with the server's.
            headers = self._decoder.decode(b"".join(fragments), raw=False)
            if any(name == ":method" for name, _ in headers):
                self.streams.append((stream_id, headers))

    def authorities(self):
        """The `:authority` of each request seen (None when absent)."""
        with self._lock:
            return [
                next((v for n, v in headers if n == ":authority"), None)
                for _, headers in self.streams
            ]

    def pseudo_headers(self):
        """The pseudo-header names of each request seen, in order."""
        with self._lock:
            return [[n for n, _ in headers if n.startswith(":")] for _, headers in self.streams]


class Relay:
    """A unix socket that forwards every connection to `target` unchanged and
    records the request headers the client sends, so that a report says what
    really went over the wire, not what the client was asked to send.

    The relay runs in the client's own process, so the server sees the same
    uid and pid (SO_PEERCRED) as with a direct connection."""

    def __init__(self, target):
        self.target = target
        self.dir = tempfile.mkdtemp(prefix="signet-relay-")
        self.path = os.path.join(self.dir, "relay.sock")
        self.requests = RequestHeaders()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(
                target=self._pump, args=(client, upstream, self.requests), daemon=True
            ).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pump(src, dst, sniffer):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if sniffer is not None:
                    sniffer.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._listener.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def split_der(blob):
    """Splits concatenated DER certificates (as the Workload API sends chains
    and bundles) into their certificates."""
    certs = []
    i = 0
    while i < len(blob):
        if blob[i] != 0x30:
            raise ValueError(f"no DER SEQUENCE at offset {i}")
        first = blob[i + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            header, length = 2 + n, int.from_bytes(blob[i + 2:i + 2 + n], "big")
        certs.append(x509.load_der_x509_certificate(blob[i:i + header + length]))
        i += header + length
    return certs


def to_pem(certs):
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def key_fits(cert, key):
    """Whether `key` (a private key object) is the key of `cert`."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def report_secrets(secrets):
    """The report on the SDS secrets `default` and `ROOTCA` (messages of
    sds_minimal.proto)."""
    default = secrets["default"]
    if default.WhichOneof("type") != "tls_certificate":
        fail("secret `default` holds no tls_certificate")
    chain = x509.load_pem_x509_certificates(default.tls_certificate.certificate_chain.inline_bytes)
    key = serialization.load_pem_private_key(
        default.tls_certificate.private_key.inline_bytes, password=None
    )
    root = secrets["ROOTCA"]
    if root.WhichOneof("type") != "validation_context":
        fail("secret `ROOTCA` holds no validation_context")
    roots = x509.load_pem_x509_certificates(root.validation_context.trusted_ca.inline_bytes)
    return {
        "chain_pem": to_pem(chain),
        "key_fits": key_fits(chain[0], key),
        "bundle_pem": to_pem(roots),
    }


def retry(what, call, retryable, timeout=DEFAULT_TIMEOUT):
    """Calls `call` until it returns, retrying errors for which
    `retryable(error)` holds (a workload registered a moment ago is refused
    until the agent has its entry) until `timeout`; other errors propagate."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - filtered just below
            if not retryable(err) or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {type(err).__name__}: {err}") from err
            time.sleep(0.1)


def emit(report):
    json.dump(report, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def fail(message):
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)
