"""py-spiffe (PyPI `spiffe`, on grpcio) as a second, independent client of
the agent's Workload API, used exactly as an application would use it: no
channel options, its own `workload.spiffe.io` header, its own `:authority`.

  fetch  X.509-SVIDs, the X.509 context, FetchX509Bundles, a JWT-SVID for
         --audience, FetchJWTBundles, the JWT checked against that bundle by
         py-spiffe itself, ValidateJWTSVID for that audience and for another
  watch  the X.509 context stream (FetchX509SVID kept open) until the SVID
         is replaced by a renewed one, or --timeout runs out

Prints a JSON report for the Rust test to judge.

Usage: pyspiffe_client.py fetch|watch --socket PATH [--audience A] [--timeout S]
"""

import argparse
import threading
import time
from importlib import metadata

import spiffe
from spiffe.errors import PySpiffeError
from spiffe.svid.jwt_svid import JwtSvid
from spiffe.workloadapi.errors import ValidateJwtSvidError

import interop_common as common


def svid_report(svid):
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain_pem": common.to_pem(svid.cert_chain),
        "serial": format(svid.leaf.serial_number, "x"),
        "key_fits": common.key_fits(svid.leaf, svid.private_key),
    }


def not_yet_registered(err):
    # py-spiffe folds the gRPC status into its own error's message.
    return "PERMISSION_DENIED" in str(err)


def fetch(client, audience):
    first = common.retry("fetch_x509_svid", client.fetch_x509_svid, not_yet_registered)
    trust_domain = first.spiffe_id.trust_domain
    svids = client.fetch_x509_svids()
    context = client.fetch_x509_context()
    context_bundle = context.x509_bundle_set.get_bundle_for_trust_domain(trust_domain)

    x509_bundles = client.fetch_x509_bundles()
    x509_bundle = x509_bundles.get_bundle_for_trust_domain(trust_domain)
    if x509_bundle is None:
        common.fail(f"FetchX509Bundles has no bundle for {trust_domain}")

    jwt = client.fetch_jwt_svid(audience={audience})
    jwt_bundles = client.fetch_jwt_bundles()
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(trust_domain)
    if jwt_bundle is None:
        common.fail(f"FetchJWTBundles has no bundle for {trust_domain}")
    # py-spiffe checks the signature with the bundle's key: a verdict that
    # owes nothing to the agent.
    locally = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {audience})
    by_agent = client.validate_jwt_svid(jwt.token, audience)
    try:
        client.validate_jwt_svid(jwt.token, "not-" + audience)
        other_audience = "accepted"
    except ValidateJwtSvidError as err:
        other_audience = f"refused: {err}"

    return {
        "x509_svid": svid_report(first),
        "x509_svids": [svid_report(s) for s in svids],
        "context_svids": [str(s.spiffe_id) for s in context.x509_svids],
        "context_bundle_pem": common.to_pem(context_bundle.x509_authorities)
        if context_bundle
        else None,
        "x509_bundle_trust_domains": sorted(
            str(b.trust_domain) for b in x509_bundles.bundles
        ),
        "x509_bundle_pem": common.to_pem(
            sorted(x509_bundle.x509_authorities, key=lambda c: c.serial_number)
        ),
        "jwt_svid": {
            "spiffe_id": str(jwt.spiffe_id),
            "audience": sorted(jwt.audience),
            "expiry": jwt.expiry,
            "token": jwt.token,
        },
        "jwt_bundle_trust_domains": sorted(str(b.trust_domain) for b in jwt_bundles.bundles),
        "jwt_bundle_key_ids": sorted(jwt_bundle.jwt_authorities.keys()),
        "jwt_validated_locally": str(locally.spiffe_id),
        "jwt_validated_by_agent": str(by_agent.spiffe_id),
        "jwt_other_audience": other_audience,
    }


def watch(client, timeout):
    """Keeps the X.509 context stream open and records every update, until
    one carries a leaf with a serial not seen before."""
    updates = []
    errors = []
    changed = threading.Event()
    lock = threading.Lock()

    def on_success(context):
        with lock:
            updates.append(svid_report(context.default_svid))
            if len({u["serial"] for u in updates}) > 1:
                changed.set()

    def on_error(err):
        with lock:
            errors.append(f"{type(err).__name__}: {err}")
        changed.set()

    started = time.monotonic()
    handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    changed.wait(timeout)
    handle.cancel()
    with lock:
        return {
            "updates": list(updates),
            "errors": list(errors),
            "seconds": round(time.monotonic() - started, 2),
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fetch", "watch"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--audience", default="db")
    parser.add_argument("--timeout", type=float, default=common.DEFAULT_TIMEOUT)
    args = parser.parse_args()

    client = spiffe.WorkloadApiClient(
        socket_path=f"unix:{args.socket}", default_timeout=common.DEFAULT_TIMEOUT
    )
    try:
        if args.mode == "fetch":
            report = fetch(client, args.audience)
        else:
            report = watch(client, args.timeout)
    except (RuntimeError, PySpiffeError) as err:
        common.fail(f"{type(err).__name__}: {err}")
    finally:
        client.close()
    report.update(client=f"py-spiffe {metadata.version('spiffe')}", mode=args.mode)
    common.emit(report)


if __name__ == "__main__":
    main()
