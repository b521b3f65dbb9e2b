"""A gRPC call over a bare HTTP/2 connection (the `h2` package) that sends no
`:authority` at all, which HTTP/2 allows (RFC 9113 section 8.3.1) and no
gRPC library does: grpcio always sends one. Calls FetchX509SVID on the
Workload API or FetchSecrets (`default`, `ROOTCA`) on SDS.

Prints a JSON report like grpcio_client.py's, with the request headers seen
on the wire (through an in-process relay).

Usage: h2_client.py --api workload|sds --socket PATH
"""

import argparse
import socket

import h2.config
import h2.connection
import h2.events
from cryptography.hazmat.primitives import serialization

import interop_common as common

PERMISSION_DENIED = 7
CANCEL = 0x8


class GrpcError(Exception):
    def __init__(self, status, message):
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status


def grpc_frame(message):
    """A gRPC length-prefixed message: uncompressed flag, 4-byte length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def call(socket_path, method, request, extra_headers):
    """Sends one request message on a new connection and returns the first
    response message (a server stream is cancelled after it)."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        # h2 refuses to send a request without :authority or host; leaving
        # both out is the point of this client.
        validate_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(common.DEFAULT_TIMEOUT)
    try:
        sock.connect(socket_path)
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] + extra_headers
        conn.send_headers(stream, headers)
        conn.send_data(stream, grpc_frame(request.SerializeToString()), end_stream=True)
        sock.sendall(conn.data_to_send())

        body = b""
        status = None
        message = ""
        while True:
            data = sock.recv(65536)
            if not data:
                raise GrpcError(None, "the server closed the connection")
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields = dict(event.headers)
                    if "grpc-status" in fields:
                        status = int(fields["grpc-status"])
                        message = fields.get("grpc-message", "")
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise GrpcError(None, f"RST_STREAM with error code {event.error_code}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise GrpcError(None, f"GOAWAY with error code {event.error_code}")
            if len(body) >= 5:
                length = int.from_bytes(body[1:5], "big")
                if len(body) >= 5 + length:
                    if status is None:
                        conn.reset_stream(stream, error_code=CANCEL)
                        sock.sendall(conn.data_to_send())
                    return body[5:5 + length]
            if status is not None:
                raise GrpcError(status, message)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()


def permission_denied(err):
    return isinstance(err, GrpcError) and err.status == PERMISSION_DENIED


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["workload", "sds"], required=True)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()

    workload_pb2, _, sds_pb2, _ = common.generate_stubs()
    relay = common.Relay(args.socket)
    try:
        if args.api == "workload":
            raw = common.retry(
                "FetchX509SVID",
                lambda: call(
                    relay.path,
                    common.WORKLOAD_FETCH_X509,
                    workload_pb2.X509SVIDRequest(),
                    [common.WORKLOAD_HEADER],
                ),
                permission_denied,
            )
            response = workload_pb2.X509SVIDResponse()
            response.ParseFromString(raw)
            if not response.svids:
                common.fail("FetchX509SVID answered with no SVID")
            svid = response.svids[0]
            chain = common.split_der(svid.x509_svid)
            key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
            report = {
                "spiffe_id": svid.spiffe_id,
                "chain_pem": common.to_pem(chain),
                "bundle_pem": common.to_pem(common.split_der(svid.bundle)),
                "key_fits": common.key_fits(chain[0], key),
            }
        else:
            request = sds_pb2.DiscoveryRequest(
                node=sds_pb2.Node(id="h2-interop", cluster="interop"),
                resource_names=["default", "ROOTCA"],
                type_url=common.SECRET_TYPE_URL,
            )
            raw = common.retry(
                "FetchSecrets",
                lambda: call(relay.path, common.SDS_FETCH, request, []),
                permission_denied,
            )
            response = sds_pb2.DiscoveryResponse()
            response.ParseFromString(raw)
            secrets = {}
            for resource in response.resources:
                secret = sds_pb2.Secret()
                secret.ParseFromString(resource.value)
                secrets[secret.name] = secret
            missing = [n for n in ("default", "ROOTCA") if n not in secrets]
            if missing:
                common.fail(f"FetchSecrets left out {missing}")
            report = common.report_secrets(secrets)
    except RuntimeError as err:
        common.fail(f"{err}\nrequest headers seen on the wire: {relay.requests.streams}")
    finally:
        relay.close()
    report.update(
        client=f"h2 {h2.__version__}",
        api=args.api,
        authority="none",
        relay_socket=relay.path,
        wire_authorities=relay.requests.authorities(),
        wire_pseudo_headers=relay.requests.pseudo_headers(),
    )
    common.emit(report)


if __name__ == "__main__":
    main()
