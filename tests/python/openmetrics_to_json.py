"""Scrapes a Prometheus endpoint and prints its samples as JSON.

Usage: openmetrics_to_json.py URL

An independent judge of signet's /metrics: the official Python client
fetches the page, checks the content type and parses it with its own
OpenMetrics parser (which rejects malformed text, a missing "# EOF",
wrong suffixes, duplicate families...). Prints
{"content_type": ..., "families": {name: type}, "samples": [{"name", "labels", "value"}]}.
Exits non-zero on any failure, with the reason on stderr.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

OPENMETRICS = "application/openmetrics-text"


def main() -> int:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as resp:
        content_type = resp.headers.get("Content-Type", "")
        text = resp.read().decode("utf-8")
    if not content_type.startswith(OPENMETRICS):
        print(f"unexpected content type {content_type!r}", file=sys.stderr)
        return 1
    families = {}
    samples = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    json.dump({"content_type": content_type, "families": families, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
