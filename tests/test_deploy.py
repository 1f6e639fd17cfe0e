"""deploy/ agrees with the code (ports, probe paths, config keys, metric names, promtool)
and passes the field's own validators (kubernetes-validate and the Prometheus Operator's
CRD schemas, hadolint, the Compose specification's schema), which fail on broken copies."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    KUBERNETES_VERSION,
    alert_rules,
    broken_copy,
    compose_findings,
    dashboard,
    dockerfile_findings,
    k8s_documents,
    k8s_findings,
    kustomize_resources,
    metric_names,
    promtool,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_trainer.config import parse_settings
from stream_trainer.metrics import Metrics
from stream_trainer.metrics.serving import ServingMetrics

METRICS_PORT = 9108


def k8s(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def exported_names() -> set[str]:
    """Every sample name the daemon's registry can export (with one pipeline's series)."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    h = m.pipeline("p", "page_hinkley")
    h.on_batch(
        trained=1,
        batch_loss=0.1,
        smoothed_loss=0.1,
        update_seconds=0.001,
        event_ages=[0.01],
        lr=0.1,
        model_version=1,
        skipped=None,
    )
    h.on_drift("page_hinkley", 1.0)
    h.on_checkpoint(0.01, 1.0)
    h.on_partitions([("t", 0)])
    h.on_lag("t", 0, 0)
    h.on_offset_reset("t", 0)
    h.on_quality({"auc": 0.7})
    m.broker_up.set(1)
    sm = ServingMetrics(reg)  # serving and delayed labels (their own series)
    sm.publish_hook("p")(1, 0.01)
    sm.on_request("p", "ok", 0.001, 1)
    j = sm.joiner_hooks("p")
    j.resolved("labelled")
    j.delay(1.0)
    j.pending(1)
    text = __import__("prometheus_client").generate_latest(reg).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_metric_in_the_dashboard_and_alerts_is_exported():
    used = metric_names()
    assert {
        "stream_trainer_loss",
        "stream_trainer_consumer_lag",
        "stream_trainer_event_to_update_seconds_bucket",
    } <= used
    assert used <= exported_names(), used - exported_names()


def test_dashboard_has_the_panels_operators_need():
    d = dashboard()
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for needle in (
        "loss over time",
        "events/s",
        "updates/s",
        "p50 / p99",
        "lag",
        "checkpoint age",
        "rejected",
        "trained vs served",
        "train-to-serve age p99",
        "predict requests by outcome",
        "label delay p50 / p99",
        "impressions resolved by outcome",
        "impressions pending",
        "labels unmatched by reason",
    ):
        assert needle in titles, needle
    assert any(a.get("name") == "Drift detected" for a in d["annotations"]["list"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_the_failure_modes():
    names = {r["alert"] for g in alert_rules()["groups"] for r in g["rules"]}
    assert {
        "StreamTrainerLossAboveBaseline",
        "StreamTrainerDriftStorm",
        "StreamTrainerConsumerLagGrowing",
        "StreamTrainerStaleModel",
        "StreamTrainerNoEvents",
        "StreamTrainerHighRejectRate",
        "StreamTrainerMostEventsRejected",
        "StreamTrainerCheckpointTooOld",
    } <= names


def test_the_reject_alerts_fire_when_most_events_are_duplicates(tmp_path):
    """promtool's rule unit test: a pipeline that consumes 1,000 events/s and rejects 98%
    of them as duplicates raises the critical alert after its 2 minutes; a healthy one
    (1% rejected) does not raise it."""
    (rule,) = [r for g in alert_rules()["groups"] for r in g["rules"]
               if r["alert"] == "StreamTrainerMostEventsRejected"]  # fmt: skip
    annotations = {k: v.replace("{{ $labels.pipeline }}", "a")
                   for k, v in rule["annotations"].items()}  # fmt: skip
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {"series": 'stream_trainer_events_consumed_total{pipeline="a"}',
                             "values": "0+60000x30"},
                            {"series": 'stream_trainer_events_rejected_total{pipeline="a",'
                                       'reason="duplicate"}', "values": "0+58800x30"},
                            {"series": 'stream_trainer_events_consumed_total{pipeline="b"}',
                             "values": "0+60000x30"},
                            {"series": 'stream_trainer_events_rejected_total{pipeline="b",'
                                       'reason="bad_json"}', "values": "0+600x30"},
                        ],
                        "alert_rule_test": [
                            {"eval_time": "1m", "alertname": "StreamTrainerMostEventsRejected",
                             "exp_alerts": []},
                            {"eval_time": "5m", "alertname": "StreamTrainerMostEventsRejected",
                             "exp_alerts": [{"exp_labels": {"pipeline": "a",
                                                            "severity": "critical"},
                                             "exp_annotations": annotations}]},
                        ],
                    }
                ],
            }
        )
    )  # fmt: skip
    r = subprocess.run([promtool(), "test", "rules", str(tmp_path / "test.yml")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_k8s_prometheusrule_and_configmap_mirror_the_compose_files():
    (rule,) = k8s("prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule" and rule["spec"] == alert_rules()
    (cm,) = k8s("configmap.yaml")
    assert cm["data"]["pipelines.yaml"] == (DEPLOY / "pipelines.yaml").read_text()
    settings = parse_settings(yaml.safe_load(cm["data"]["pipelines.yaml"]), "configmap")
    assert [p.name for p in settings.pipelines] == ["clicks", "ticks", "sensors"]


def test_k8s_ports_probes_and_config_agree_with_the_code():
    docs = {d["kind"]: d for d in k8s("deployment.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STREAM_TRAINER_METRICS__ADDRESS"] == f"0.0.0.0:{METRICS_PORT}"
    assert c["args"][:3] == ["run", "--config", "/etc/stream-trainer/pipelines.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/stream-trainer"
    (cm,) = k8s("configmap.yaml")
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == cm["metadata"][
        "name"
    ]
    settings = parse_settings(yaml.safe_load(cm["data"]["pipelines.yaml"]), "configmap")
    assert str(settings.checkpoint.dir).startswith(mounts["checkpoints"])
    assert (
        docs["PersistentVolumeClaim"]["metadata"]["name"]
        == {v["name"]: v for v in pod["volumes"]}["checkpoints"]["persistentVolumeClaim"][
            "claimName"
        ]
    )
    (svc,) = k8s("service.yaml")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    (pm,) = k8s("podmonitor.yaml")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert pm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert set(kust["resources"]) == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {
        "kustomization.yaml"
    }


def test_k8s_replicas_launch_torchrun_with_a_config_replicas_accept(tmp_path):
    from stream_trainer.pipeline.replicated import ReplicatedPipeline

    docs = {d["kind"]: d for d in k8s("replicas/statefulset.yaml")}
    sts, svc = docs["StatefulSet"], docs["Service"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "torch.distributed.run"]
    args = c["args"]
    assert "--rdzv-backend=c10d" in args and "--nproc-per-node=1" in args
    endpoint = next(a for a in args if a.startswith("--rdzv-endpoint=")).split("=", 1)[1]
    host, port = endpoint.rsplit(":", 1)
    assert host == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}"
    assert (
        svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    )
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    assert args[args.index("-m") + 1 : args.index("-m") + 3] == ["stream_trainer", "run"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (cm,) = k8s("replicas/configmap.yaml")
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    settings = parse_settings(yaml.safe_load(cm["data"]["pipelines.yaml"]), "configmap")
    settings = settings.model_copy(
        update={"checkpoint": settings.checkpoint.model_copy(update={"dir": tmp_path})}
    )
    for spec in settings.pipelines:  # replicas refuse what they cannot keep in step
        ReplicatedPipeline(settings, spec)
    kust = yaml.safe_load((DEPLOY / "k8s" / "replicas" / "kustomization.yaml").read_text())
    assert set(kust["resources"]) == {"configmap.yaml", "statefulset.yaml"}


def test_compose_agrees_with_the_code():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    s = compose["services"]
    assert {"kafka", "stream-trainer", "producer", "prometheus", "grafana"} <= set(s)
    kafka = s["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    st = s["stream-trainer"]
    assert (
        st["environment"]["STREAM_TRAINER_KAFKA__BOOTSTRAP_SERVERS"]
        == kafka["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    )
    assert st["environment"]["STREAM_TRAINER_METRICS__ADDRESS"].endswith(f":{METRICS_PORT}")
    assert f"{METRICS_PORT}:{METRICS_PORT}" in st["ports"]
    assert "./pipelines.yaml:/etc/stream-trainer/pipelines.yaml:ro" in st["volumes"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"stream-trainer:{METRICS_PORT}"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    mounts = " ".join(s["prometheus"]["volumes"])
    assert "alerts.yml:/etc/prometheus/alerts.yml" in mounts
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == dashboard()["panels"][0]["datasource"]["uid"]
    assert ds["datasources"][0]["url"].endswith(":9090")


def test_promtool_accepts_the_config_and_the_rules(tmp_path):
    tool = promtool()
    r = subprocess.run(
        [tool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # The compose config names the rules at their in-container path; check it with the
    # file placed there, relative to a copy of the config.
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    for cfg_path in (tmp_path / "prometheus.yml", DEPLOY / "prometheus" / "prometheus.local.yml"):
        r = subprocess.run([tool, "check", "config", str(cfg_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


K8S_RESOURCES = [
    *kustomize_resources(DEPLOY / "k8s"),
    *kustomize_resources(DEPLOY / "k8s" / "replicas"),
]


@pytest.mark.parametrize("path", K8S_RESOURCES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_k8s_manifests_validate_for_the_stated_kubernetes_version(path):
    """Every resource ``kubectl apply -k`` sends, against that release's schemas, strict."""
    assert k8s_documents(path)
    assert k8s_findings(path) == []


def test_the_k8s_validators_fail_on_broken_manifests(tmp_path):
    """Each kind of mistake a cluster would refuse is a finding: a wrong type, a misspelt
    field, an API version the release no longer serves, a malformed CRD field."""
    (dep, pvc) = k8s_documents(DEPLOY / "k8s" / "deployment.yaml")
    (pm,) = k8s_documents(DEPLOY / "k8s" / "podmonitor.yaml")
    (rule,) = k8s_documents(DEPLOY / "k8s" / "prometheusrule.yaml")

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    broken = {
        "containerPort": broken_copy(
            dep, lambda d: container(d)["ports"][0].update(containerPort="9108")
        ),
        "livenesProbe": broken_copy(
            dep, lambda d: container(d).update(livenesProbe=container(d).pop("livenessProbe"))
        ),
        "extensions/v1beta1": broken_copy(dep, lambda d: d.update(apiVersion="extensions/v1beta1")),
        "podMetricEndpoints": broken_copy(
            pm, lambda d: d["spec"].update(podMetricEndpoints=d["spec"].pop("podMetricsEndpoints"))
        ),
        "'15 seconds' does not match": broken_copy(
            pm, lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="15 seconds")
        ),
        "'expr' is a required property": broken_copy(
            rule, lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr")
        ),
    }
    for needle, doc in broken.items():
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump_all([pvc, doc]))  # one good document beside it
        findings = k8s_findings(path)
        assert len(findings) == 1 and needle in findings[0], (needle, findings)


def test_deploy_readme_names_the_kubernetes_version_the_tests_validate():
    assert f"Kubernetes {KUBERNETES_VERSION}" in (DEPLOY / "README.md").read_text()


def test_dockerfile_has_no_hadolint_warnings_and_a_broken_one_has(tmp_path):
    assert dockerfile_findings(DEPLOY / "Dockerfile") == []
    text = (DEPLOY / "Dockerfile").read_text()
    broken = re.sub(r"^FROM python:3\.11-slim$", "FROM python:latest", text, flags=re.M)
    broken = re.sub(r"^CMD \[.*\]$", "CMD stream-trainer run", broken, flags=re.M)
    assert broken.count("\n") == text.count("\n") and broken != text
    (tmp_path / "Dockerfile").write_text(broken)
    findings = " ".join(dockerfile_findings(tmp_path / "Dockerfile"))
    assert "DL3007" in findings and "DL3025" in findings, findings  # :latest; shell-form CMD


def test_compose_file_matches_the_compose_specification_and_a_broken_one_does_not(tmp_path):
    assert compose_findings(DEPLOY / "docker-compose.yml") == []
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    compose["services"]["stream-trainer"]["port"] = compose["services"]["stream-trainer"].pop(
        "ports"
    )
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(compose))
    (finding,) = compose_findings(tmp_path / "docker-compose.yml")
    assert "port" in finding and "stream-trainer" in finding, finding
