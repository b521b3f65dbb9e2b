"""Reads a stream of Kubernetes manifests (YAML, as `signet install --render`
writes it) and prints them as one JSON list, each ConfigMap's `*.toml` keys
also parsed (under "_toml"), so the deploy test checks structure with PyYAML
and tomllib, parsers that are not ours.

Usage: manifests_to_json.py FILE
"""
import json
import sys
import tomllib

import yaml

with open(sys.argv[1], encoding="utf-8") as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]
for doc in docs:
    if doc.get("kind") == "ConfigMap":
        doc["_toml"] = {
            key: tomllib.loads(text)
            for key, text in (doc.get("data") or {}).items()
            if key.endswith(".toml")
        }
json.dump(docs, sys.stdout)
