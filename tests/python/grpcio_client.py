"""A raw grpcio client (grpc-core, as every Python, C++, Ruby and PHP gRPC
client) of the agent's Workload API or SDS, with stubs generated at run time,
sending the `:authority` form it is told to:

  default  grpcio's own choice for a `unix:` target (grpc-core >= 1.57 sends
           the percent-encoded socket path)
  path     the raw socket path, as grpc-java sends it (channel option
           `grpc.default_authority`)

Prints a JSON report: what the server sent, and the request headers that
went over the wire (through an in-process relay).

Usage: grpcio_client.py --api workload|sds --socket PATH --authority default|path
"""

import argparse
import queue

import grpc
from cryptography.hazmat.primitives import serialization

import interop_common as common


def channel_for(relay, authority, socket_path):
    options = []
    if authority == "path":
        options.append(("grpc.default_authority", socket_path))
    return grpc.insecure_channel(f"unix:{relay.path}", options=options)


def permission_denied(err):
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.PERMISSION_DENIED


def fetch_workload(channel, workload_pb2, workload_pb2_grpc):
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)

    def first_response():
        stream = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(),
            metadata=[common.WORKLOAD_HEADER],
            timeout=common.DEFAULT_TIMEOUT,
        )
        try:
            return next(stream)
        finally:
            stream.cancel()

    response = common.retry("FetchX509SVID", first_response, permission_denied)
    if not response.svids:
        common.fail("FetchX509SVID answered with no SVID")
    svid = response.svids[0]
    chain = common.split_der(svid.x509_svid)
    key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
    return {
        "spiffe_id": svid.spiffe_id,
        "chain_pem": common.to_pem(chain),
        "bundle_pem": common.to_pem(common.split_der(svid.bundle)),
        "key_fits": common.key_fits(chain[0], key),
    }


def fetch_sds(channel, sds_pb2, sds_pb2_grpc):
    """StreamSecrets as Envoy uses it: one request for `default` and
    `ROOTCA`, an ACK for every response, until both have arrived."""
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    wanted = ["default", "ROOTCA"]

    def requests(outbox):
        while True:
            request = outbox.get()
            if request is None:
                return
            yield request

    def request(version="", nonce=""):
        return sds_pb2.DiscoveryRequest(
            version_info=version,
            node=sds_pb2.Node(id="grpcio-interop", cluster="interop"),
            resource_names=wanted,
            type_url=common.SECRET_TYPE_URL,
            response_nonce=nonce,
        )

    def stream_until_complete():
        # One queue per attempt: a retry must not inherit the end-of-stream
        # marker of the attempt before.
        outbox = queue.Queue()
        outbox.put(request())
        stream = stub.StreamSecrets(requests(outbox), timeout=common.DEFAULT_TIMEOUT)
        secrets = {}
        try:
            for response in stream:
                for resource in response.resources:
                    if resource.type_url != common.SECRET_TYPE_URL:
                        common.fail(f"a resource of type {resource.type_url}")
                    secret = sds_pb2.Secret()
                    secret.ParseFromString(resource.value)
                    secrets[secret.name] = secret
                outbox.put(request(response.version_info, response.nonce))
                if all(name in secrets for name in wanted):
                    return secrets
        finally:
            outbox.put(None)
            stream.cancel()
        common.fail("the SDS stream ended before both secrets arrived")

    secrets = common.retry("StreamSecrets", stream_until_complete, permission_denied)
    return common.report_secrets(secrets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["workload", "sds"], required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--authority", choices=["default", "path"], required=True)
    args = parser.parse_args()

    workload_pb2, workload_pb2_grpc, sds_pb2, sds_pb2_grpc = common.generate_stubs()
    relay = common.Relay(args.socket)
    channel = channel_for(relay, args.authority, args.socket)
    try:
        if args.api == "workload":
            report = fetch_workload(channel, workload_pb2, workload_pb2_grpc)
        else:
            report = fetch_sds(channel, sds_pb2, sds_pb2_grpc)
    except RuntimeError as err:
        common.fail(f"{err}\nrequest headers seen on the wire: {relay.requests.streams}")
    finally:
        channel.close()
        relay.close()
    report.update(
        client=f"grpcio {grpc.__version__}",
        api=args.api,
        authority=args.authority,
        relay_socket=relay.path,
        wire_authorities=relay.requests.authorities(),
    )
    common.emit(report)


if __name__ == "__main__":
    main()
