"""The manifests in deploy/: valid against the Kubernetes and KServe schemas (strictly: an
unknown field is an error), and consistent with pyserving (flags it knows, the health and
metrics endpoints it serves, memory for its budget, a grace period longer than its drain,
KServe's argument contract for TF Serving)."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pyserving.flags import parse_flags
from pyserving.server.app import ServerOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"

#: Kubernetes releases the plain manifests must be valid for: the newest kubernetes-validate
#: knows, and an older one still common in managed clusters.
KUBERNETES_VERSIONS = (kubernetes_validate.latest_version(), "1.30")

#: KServe kinds -> their schema file (extracted from KServe's CRDs; see deploy/schemas).
KSERVE_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-serving.kserve.io-v1alpha1",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving.kserve.io-v1beta1",
}

#: The arguments KServe's TF Serving runtime gives the server (kserve-tensorflow-serving).
KSERVE_TF_SERVING_ARGS = [
    "--model_name={{.Name}}",
    "--port=9000",
    "--rest_api_port=8080",
    "--model_base_path=/mnt/models",
]


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((str(path.relative_to(ROOT)), document))
    return found


def by_kind(kind: str) -> dict[str, Any]:
    (document,) = [d for _, d in documents() if d["kind"] == kind]
    return document


def strict(schema: Any) -> Any:
    """``schema`` with unknown properties refused wherever it lists properties (the API
    server would silently drop them: a typo would go unnoticed)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def kserve_validator(name: str) -> jsonschema.Validator:
    schema = strict(json.loads((SCHEMAS / f"{name}.json").read_text()))
    return jsonschema.Draft7Validator(schema)


def validate(document: dict[str, Any]) -> None:
    """Raise when ``document`` is not valid for its kind."""
    key = (document["apiVersion"], document["kind"])
    if key in KSERVE_SCHEMAS:
        kserve_validator(KSERVE_SCHEMAS[key]).validate(document)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def test_every_manifest_is_valid() -> None:
    found = documents()
    kinds = sorted(d["kind"] for _, d in found)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "InferenceService",
        "PodDisruptionBudget",
        "Service",
        "ServingRuntime",
    ]
    for path, document in found:
        try:
            validate(document)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{path}: {document['kind']} is invalid: {exc.message}")


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime", "InferenceService"])
def test_validation_refuses_a_misspelt_field(kind: str) -> None:
    broken = copy.deepcopy(by_kind(kind))
    broken["spec"]["replicaz" if kind == "Deployment" else "containerz"] = []
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(broken)


def container(kind: str) -> dict[str, Any]:
    document = by_kind(kind)
    spec = document["spec"]["template"]["spec"] if kind == "Deployment" else document["spec"]
    (first,) = spec["containers"]
    return dict(first)


def flags_of(args: list[str]) -> Any:
    flags = parse_flags(args)
    assert flags.unknown == [], flags.unknown
    return flags


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[unit]


def test_servingruntime_takes_kserve_arguments_for_tf_serving() -> None:
    runtime = by_kind("ServingRuntime")
    main = container("ServingRuntime")
    assert main["command"] == ["/usr/bin/tensorflow_model_server"]  # a link in the image
    assert main["args"][: len(KSERVE_TF_SERVING_ARGS)] == KSERVE_TF_SERVING_ARGS
    flags = flags_of(main["args"])
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert {("tensorflow", "1"), ("tensorflow", "2")} <= formats
    # Every platform pyserving ships (its plugins, in pyproject.toml) is a model format.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    platforms = set(project["entry-points"]["pyserving.platforms"])
    missing = platforms - {name for name, _ in formats}
    assert "tensorflow" in platforms
    assert not missing, (
        f"platforms {sorted(missing)} are not in deploy/kserve/servingruntime.yaml's "
        "supportedModelFormats (add them, with autoSelect: false unless KServe's own layout "
        "for that format has version directories)"
    )
    # Metrics where the annotations say.
    monitoring = (ROOT / "docker" / "monitoring.config").read_text()
    assert flags.monitoring_config_file == "/etc/pyserving/monitoring.config"
    path = runtime["spec"]["annotations"]["prometheus.kserve.io/path"]
    assert f'path: "{path}"' in monitoring
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(flags.rest_api_port)
    assert main["securityContext"]["runAsNonRoot"] is True


def test_inferenceservice_names_the_runtime() -> None:
    service = by_kind("InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == by_kind("ServingRuntime")["metadata"]["name"]
    assert model["modelFormat"]["name"] == "tensorflow"


def test_deployment_probes_metrics_memory_and_termination() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    main = container("Deployment")
    flags = flags_of(main["args"])
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}  # the entrypoint's defaults
    # Probes on the health endpoints of the REST port.
    assert main["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert main["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # Prometheus scrapes the path the monitoring config serves, on the REST port.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert flags.monitoring_config_file == "/etc/pyserving/monitoring.config"
    monitoring = (ROOT / "docker" / "monitoring.config").read_text()
    assert f'path: "{annotations["prometheus.io/path"]}"' in monitoring
    # Memory: the budget, plus room for TensorFlow and requests; the limit no lower.
    budget = flags.model_memory_budget_bytes
    requested = memory_bytes(main["resources"]["requests"]["memory"])
    assert budget > 0 and requested >= budget + (512 << 20)
    assert memory_bytes(main["resources"]["limits"]["memory"]) >= requested
    # Termination: longer than the preStop pause plus the server's drain.
    pause = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = ServerOptions.__dataclass_fields__["shutdown_grace_seconds"].default
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + drain
    # The cache directory is a writable volume (the root file system is read-only).
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert flags.model_cache_dir in mounts and "/tmp" in mounts
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_service_hpa_and_budget_point_at_the_deployment() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "http"}
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
