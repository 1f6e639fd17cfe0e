from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream_trainer.cli import main
from stream_trainer.config import load_settings, parse_settings
from stream_trainer.errors import ConfigError

MIN = {"pipelines": [{"name": "clicks", "kind": "clicks", "topics": ["clicks"]}]}


def test_defaults_are_sensible():
    s = parse_settings(MIN)
    p = s.pipelines[0]
    assert s.metrics.address == "127.0.0.1:9108"
    assert p.dlq_topic == "clicks.dlq"
    assert s.kafka.session_timeout_ms == 6000 and s.kafka.heartbeat_interval_ms == 1000
    assert p.drift.actions == ("challenger",)


def test_settings_are_frozen():
    s = parse_settings(MIN)
    with pytest.raises(ValidationError, match="frozen"):
        s.device = "cuda"  # type: ignore[misc]


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({**MIN, "kafak": {}}, "kafak: unknown key"),
        (
            {"pipelines": [{"name": "x", "kind": "clicks", "topics": ["t"], "btach": {}}]},
            "pipelines.0.btach: unknown key",
        ),
        ({"pipelines": []}, "pipelines"),
        ({"pipelines": [{"name": "Bad Name", "kind": "clicks", "topics": ["t"]}]}, "name"),
        (
            {
                "pipelines": [
                    {"name": "a", "kind": "clicks", "topics": ["t"]},
                    {"name": "a", "kind": "ticks", "topics": ["u"]},
                ]
            },
            "repeated: a",
        ),
        ({"pipelines": [{"name": "a", "kind": "custom", "topics": ["t"]}]}, "import paths"),
        ({**MIN, "metrics": {"address": "nowhere"}}, "HOST:PORT"),
        (
            {
                "pipelines": [
                    {"name": "a", "kind": "clicks", "topics": ["t"], "drift": {"detector": "magic"}}
                ]
            },
            "drift.detector",
        ),
    ],
)
def test_errors_name_the_key(doc, needle):
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, "p.yaml")
    assert needle in str(err.value)
    assert str(err.value).startswith("p.yaml: ")
    assert "\n" not in str(err.value)


def test_env_overrides_and_explicit_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pipelines: [{name: a, kind: ticks, topics: [t]}]\n")
    env = {
        "STREAM_TRAINER_KAFKA__BOOTSTRAP_SERVERS": "k:1",
        "STREAM_TRAINER_CHECKPOINT__EVERY_SECONDS": "30",
        "STREAM_TRAINER_CONFIG": "x",
    }
    s = load_settings(path, environ=env, overrides={"metrics": {"address": "0.0.0.0:1"}})
    assert s.kafka.bootstrap_servers == "k:1"
    assert s.checkpoint.every_seconds == 30.0
    assert s.metrics.address == "0.0.0.0:1"


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(bad)


def test_check_config_prints_effective_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("pipelines: [{name: a, kind: sensors, topics: [t]}]\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bootstrap_servers: 127.0.0.1:9092" in out and "kind: sensors" in out


def test_check_config_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("pipelines: [{name: a, kind: clicks, topics: [t], model: {dimm: 3}}]\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stream-trainer check-config: error: clicks model: bad parameters")
    assert "\n" not in err and "Traceback" not in err


def test_demo_config_is_valid():
    from stream_trainer.local.demo import CONFIG

    s = load_settings(CONFIG, environ={})
    assert [p.name for p in s.pipelines] == ["clicks", "ticks", "sensors", "recs"]


def test_the_demo_has_a_joined_pipeline_that_it_serves_and_feeds():
    """recs: delayed labels, served over HTTP (loopback), fed by a --delayed-labels
    producer into the topics the demo creates; the label window fits a demo."""
    import yaml

    from stream_trainer.local.demo import CONFIG, SERVED, STREAMS, topics

    s = load_settings(CONFIG, environ={})
    recs = next(p for p in s.pipelines if p.name == SERVED)
    assert recs.kind == "clicks" and recs.labels is not None
    assert recs.labels.on_expiry == "negative" and recs.labels.window_s <= 60
    assert s.serving.address is not None and s.serving.address.startswith("127.0.0.1:")
    created = topics(yaml.safe_load(CONFIG.read_text()))
    assert set(recs.input_topics) <= set(created)  # impressions and impressions.labels
    assert {t for q in s.pipelines for t in q.input_topics} == set(created)
    feeds = [st for st in STREAMS if st.topic in recs.topics]
    assert len(feeds) == 1 and "--delayed-labels" in feeds[0].extra
    assert f"{recs.topics[0]}.labels" == recs.labels.topic  # the producer's default
    max_delay = float(feeds[0].extra[feeds[0].extra.index("--max-delay") + 1])
    assert max_delay <= recs.labels.window_s  # no click comes after its window
