#!/usr/bin/env python3
"""Convert a Kubernetes CustomResourceDefinition's openAPIV3Schema into a strict JSON Schema.

Why: `kubectl apply --dry-run=client` needs a cluster, and `kubernetes-validate` passes unknown
kinds (every CRD) silently. A JSON Schema of the CRD lets a plain `jsonschema` check catch the
mistakes that matter in a manifest: misspelled fields, wrong types, missing required fields.

The conversion follows the rules of openapi2jsonschema (which KubeRay's own scripts use), written
afresh here:

* Every object schema that lists ``properties`` and says nothing about ``additionalProperties``
  gets ``additionalProperties: false``, so an unknown field fails. (The API server prunes unknown
  fields of a structural CRD silently; a typo such as ``workerGroupSpec`` would simply vanish, so
  rejecting it here is the point.) The root is closed too, with ``apiVersion``/``kind`` pinned
  to the CRD's group/version and kind, so a manifest is never checked against the wrong schema.
* ``x-kubernetes-*`` extensions are dropped: JSON Schema has no equivalent. Two are honoured
  first: ``x-kubernetes-preserve-unknown-fields: true`` leaves its object open, and
  ``x-kubernetes-int-or-string: true`` becomes ``anyOf: [integer, string]``. CEL rules
  (``x-kubernetes-validations``) cannot be checked and are dropped.
* OpenAPI's ``nullable: true`` becomes a ``"null"`` member of ``type``; ``format:
  int-or-string`` becomes ``anyOf: [integer, string]``.
* ``description`` is dropped (``--keep-descriptions`` keeps it): it is most of the bytes and
  no part of validation.

Usage (from a checkout of github.com/ray-project/kuberay at the commit named in README.md):

    python infra/deploy/schemas/crd2jsonschema.py \
        ray-operator/config/crd/bases/ray.io_rayclusters.yaml \
        ray-operator/config/crd/bases/ray.io_rayjobs.yaml --out infra/deploy/schemas

writes ``<kind>-<group prefix>-<version>.json`` (e.g. ``raycluster-ray-v1.json``) for the
storage version of each CRD, or for ``--version``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def convert_node(node: Any, *, keep_descriptions: bool = False) -> Any:
    """Convert one OpenAPI v3 (Kubernetes structural) schema node, recursively."""
    if isinstance(node, list):
        return [convert_node(x, keep_descriptions=keep_descriptions) for x in node]
    if not isinstance(node, dict):
        return node

    preserve_unknown = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True or node.get("format") == "int-or-string"

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "description" and not keep_descriptions:
            continue
        if key in ("properties", "patternProperties", "definitions"):
            # A mapping from names to schemas: convert the schemas, never the names (a field
            # may well be called "description" or "nullable").
            out[key] = {name: convert_node(sub, keep_descriptions=keep_descriptions) for name, sub in value.items()}
        elif key == "default":
            out[key] = value  # a value, not a schema
        else:
            out[key] = convert_node(value, keep_descriptions=keep_descriptions)

    if int_or_string:
        # The CRD writes these as anyOf [integer, string] already; make sure of it either way.
        out.pop("format", None)
        out.pop("type", None)
        out["anyOf"] = _INT_OR_STRING
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"] if "null" not in types else types
    if "properties" in out and "additionalProperties" not in out and not preserve_unknown:
        out["additionalProperties"] = False
    return out


def crd_to_json_schema(crd: dict[str, Any], version: str | None = None, *, keep_descriptions: bool = False) -> tuple[str, dict[str, Any]]:
    """Return (file name, JSON Schema) for one version of a CRD (default: its storage version)."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"expected a CustomResourceDefinition, got kind {crd.get('kind')!r}")
    spec = crd["spec"]
    versions = spec["versions"]
    if version is None:
        chosen = next((v for v in versions if v.get("storage")), versions[0])
    else:
        matches = [v for v in versions if v["name"] == version]
        if not matches:
            raise ValueError(f"version {version!r} not in the CRD; it has {[v['name'] for v in versions]}")
        chosen = matches[0]
    group, kind, name = spec["group"], spec["names"]["kind"], chosen["name"]

    schema = convert_node(chosen["schema"]["openAPIV3Schema"], keep_descriptions=keep_descriptions)
    # Pin the document to this kind and version, and require what every Kubernetes object has.
    schema["properties"]["apiVersion"] = {"type": "string", "const": f"{group}/{name}"}
    schema["properties"]["kind"] = {"type": "string", "const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    schema["additionalProperties"] = False
    out = {"$schema": JSON_SCHEMA_DIALECT, "title": f"{kind} ({group}/{name})", **schema}
    return f"{kind.lower()}-{group.split('.')[0]}-{name}.json", out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crds", nargs="+", type=Path, help="CRD YAML files")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    ap.add_argument("--version", default=None, help="CRD version to convert (default: the storage version)")
    ap.add_argument("--keep-descriptions", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.crds:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            fname, schema = crd_to_json_schema(doc, args.version, keep_descriptions=args.keep_descriptions)
            # sort_keys + one key per line: the vendored files diff cleanly on the next update.
            (args.out / fname).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"{path} -> {args.out / fname}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
