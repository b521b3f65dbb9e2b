"""A grpcio client of the CA's mesh APIs (Istio IstioCertificateService and
Linkerd Identity), with stubs generated at run time by grpc_tools.protoc
from Signet's own .proto files, over TLS checked against the CA's root.

Prints a JSON report of what the server answered; the caller judges it.

Usage: mesh_client.py --addr HOST:PORT --root ROOT.pem --protos DIR --out DIR
                      --istio-csr CSR.pem --linkerd-csr CSR.der
"""

import argparse
import json
import sys
import time

import grpc
from google.protobuf import struct_pb2
from grpc_tools import protoc


def generate(protos, out):
    import grpc_tools

    include = grpc_tools.__path__[0] + "/_proto"
    rc = protoc.main([
        "protoc",
        f"-I{protos}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "istio/v1/auth/ca.proto",
        "linkerd/identity/identity.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)


def channel(addr, root, name):
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", name)])


def code_of(call):
    try:
        call()
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


def main():
    p = argparse.ArgumentParser()
    for a in ("--addr", "--root", "--protos", "--out", "--istio-csr", "--linkerd-csr"):
        p.add_argument(a, required=True)
    args = p.parse_args()
    generate(args.protos, args.out)
    from istio.v1.auth import ca_pb2, ca_pb2_grpc
    from linkerd.identity import identity_pb2, identity_pb2_grpc

    root = open(args.root, "rb").read()
    report = {}

    istio = ca_pb2_grpc.IstioCertificateServiceStub(
        channel(args.addr, root, "istiod.istio-system.svc"))
    csr = open(args.istio_csr).read()
    req = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
    md = [("authorization", "Bearer web"), ("clusterid", "Kubernetes")]
    report["istio_chain"] = list(istio.CreateCertificate(req, metadata=md, timeout=20).cert_chain)
    report["istio_other_audience"] = code_of(lambda: istio.CreateCertificate(
        req, metadata=[("authorization", "Bearer other-aud"), ("clusterid", "Kubernetes")], timeout=20))
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": "spiffe://test.org/ns/default/sa/db"})
    report["istio_impersonation_by_workload"] = code_of(lambda: istio.CreateCertificate(
        ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600, metadata=meta),
        metadata=md, timeout=20))

    # ztunnel (istio-system:ztunnel on node-a) for web, which has a pod on
    # node-a. The CA's pod watch may still be syncing: UNAVAILABLE until then.
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": "spiffe://test.org/ns/default/sa/web"})
    zreq = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600, metadata=meta)
    zmd = [("authorization", "Bearer zt"), ("clusterid", "Kubernetes")]
    for _ in range(400):
        try:
            report["istio_ztunnel_chain"] = list(
                istio.CreateCertificate(zreq, metadata=zmd, timeout=20).cert_chain)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                report["istio_ztunnel_chain"] = err.code().name
                break
            time.sleep(0.05)

    linkerd = identity_pb2_grpc.IdentityStub(channel(
        args.addr, root,
        "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local"))
    der = open(args.linkerd_csr, "rb").read()
    name = "web.default.serviceaccount.identity.linkerd.cluster.local"
    resp = linkerd.Certify(identity_pb2.CertifyRequest(
        identity=name, token=b"l5d", certificate_signing_request=der), timeout=20)
    report["linkerd_leaf"] = resp.leaf_certificate.hex()
    report["linkerd_intermediates"] = [c.hex() for c in resp.intermediate_certificates]
    report["linkerd_valid_until"] = resp.valid_until.seconds
    report["linkerd_forged_token"] = code_of(lambda: linkerd.Certify(identity_pb2.CertifyRequest(
        identity=name, token=b"forged", certificate_signing_request=der), timeout=20))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
