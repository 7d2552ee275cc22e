"""Write the JSON schema of one version of a Kubernetes CustomResourceDefinition.

    python deploy/schemas/extract.py CRD.yaml VERSION OUT.json

Takes ``spec.versions[VERSION].schema.openAPIV3Schema`` from the CRD (a YAML file, as KServe
publishes them under ``config/crd/full/``), drops the ``description`` texts (the bulk of the
file; they explain, they do not constrain) and writes the rest unchanged as JSON. The tests
validate the manifests in ``deploy/`` against the result (``tests/test_deploy.py``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import yaml


def strip_descriptions(node: Any, in_properties: bool = False) -> Any:
    """``node`` without schema ``description`` strings (a property named ``description``
    inside ``properties`` is kept)."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value, key == "properties" and not in_properties)
            for key, value in node.items()
            if in_properties or not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    crd_path, version, out_path = argv
    with open(crd_path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema = strip_descriptions(entry["schema"]["openAPIV3Schema"])
            break
    else:
        sys.stderr.write(f"{crd_path} has no version {version}\n")
        return 1
    document = {
        "$comment": (
            f"openAPIV3Schema of {crd['spec']['names']['kind']} "
            f"{crd['spec']['group']}/{version}, from {os.path.basename(crd_path)} "
            "(descriptions removed)"
        ),
        **schema,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(document, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
