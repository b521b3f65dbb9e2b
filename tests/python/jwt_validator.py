"""A workload that keeps validating JWT-SVIDs minted by another workload,
with py-spiffe (PyPI `spiffe`, on grpcio): a client that shares no code
with Signet.

Reads one `AUDIENCE TOKEN` pair per line on stdin. For each, it validates
the token twice, as a workload would:
  - locally, with py-spiffe, against the JWT bundle of the token's trust
    domain that the agent serves this workload right now (FetchJWTBundles);
  - by the agent (ValidateJWTSVID).
Prints one JSON line per token: {"ok": true, "kid": ..., "spiffe_id": ...}
or {"ok": false, "error": ...}. Ends at end of input.

Usage: jwt_validator.py --socket PATH
"""

import argparse
import base64
import json
import sys

import spiffe
from spiffe.svid.jwt_svid import JwtSvid


def kid_of(token):
    header = token.split(".", 1)[0]
    header += "=" * (-len(header) % 4)
    return json.loads(base64.urlsafe_b64decode(header)).get("kid")


def validate(client, audience, token):
    bundles = client.fetch_jwt_bundles()
    kid = kid_of(token)
    checked = []
    for bundle in bundles.bundles:
        if kid in bundle.jwt_authorities:
            locally = JwtSvid.parse_and_validate(token, bundle, {audience})
            checked.append(str(locally.spiffe_id))
    if not checked:
        known = sorted(k for b in bundles.bundles for k in b.jwt_authorities.keys())
        raise ValueError(f"key {kid} is in no JWT bundle served to this workload (known: {known})")
    by_agent = client.validate_jwt_svid(token, audience)
    if str(by_agent.spiffe_id) != checked[0]:
        raise ValueError(f"the agent says {by_agent.spiffe_id}, py-spiffe says {checked[0]}")
    return {"ok": True, "kid": kid, "spiffe_id": checked[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    client = spiffe.WorkloadApiClient(socket_path=f"unix:{args.socket}", default_timeout=10.0)
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            audience, token = line.split(" ", 1)
            try:
                result = validate(client, audience, token)
            except Exception as err:  # every failure is a result to report
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            print(json.dumps(result), flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    main()
