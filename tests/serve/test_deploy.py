"""The Kubernetes manifests in deploy/ validate against the Kubernetes API schema (kubernetes-validate, strict),
and the probes, the HPA metric and the image's command agree with the server."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def documents() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_manifests_validate():
    kv = pytest.importorskip("kubernetes_validate")
    for doc in documents():
        kv.validate(doc, "1.30", strict=True)  # raises ValidationError naming the bad field


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def test_probes_metric_and_flags_match_the_server():
    from llmkit.cli.serve import Args

    by_kind = {d["kind"]: d for d in documents()}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    flags = {a[2:] for a in container["args"] if a.startswith("--")}
    assert flags <= set(Args.__dataclass_fields__), flags - set(Args.__dataclass_fields__)
    metric = by_kind["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == metric and rules[0]["name"]["matches"] == "llmkit:num_requests_waiting"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"llmkit", "serve"' in dockerfile and "/health" in dockerfile
