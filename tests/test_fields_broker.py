"""The user's own events through the real broker and the daemon: a click log with renamed,
nested fields, ISO times and words for labels, as JSON and as Confluent-framed Avro,
trains exactly as the kind's own JSON of the same events (same weights, same losses)."""

from __future__ import annotations

import json

import pytest
import torch
from support import Daemon, base_config, consume_all, newest_checkpoint, produce
from test_fields import FIELDS, SCHEMA, SMALL, twins

from stream_trainer.edges.admin import create_topics
from stream_trainer.events.avro import encode
from stream_trainer.metrics.scrape import sample

pytestmark = pytest.mark.integration

N = 300


def test_mapped_json_and_avro_train_exactly_as_the_kinds_own(broker, topic, workdir):
    bs = broker.bootstrap
    canonical, user = twins(N, seed=11)
    topics = {"own": topic, "mapped": f"{topic}-mapped", "avro": f"{topic}-avro"}
    create_topics(bs, {t: 1 for t in topics.values()})
    produce(bs, topics["own"], [json.dumps(e).encode() for e in canonical])
    produce(bs, topics["mapped"], [json.dumps(u).encode() for u in user])
    produce(bs, topics["avro"], [encode(u, SCHEMA, schema_id=3) for u in user])
    (workdir / "schemas").mkdir()
    (workdir / "schemas" / "3.avsc").write_text(json.dumps(SCHEMA))
    # one event a step: the same updates whatever the polls' sizes (their bytes differ)
    common = {"kind": "clicks", "featurizer": SMALL,
              "batch": {"max_size": 1, "backlog_max_size": 1, "max_latency_ms": 0}}  # fmt: skip
    pipelines = [
        {"name": "own", "topics": [topics["own"]], **common},
        {"name": "mapped", "topics": [topics["mapped"]], "fields": FIELDS, **common},
        {"name": "avro", "topics": [topics["avro"]], "fields": FIELDS, "format": "avro",
         "avro": {"schemas": str(workdir / "schemas")}, **common},
    ]  # fmt: skip
    d = Daemon(base_config(bs, workdir / "ckpt", pipelines), workdir).start()
    try:
        m = d.wait_for(
            lambda m: all(
                sample(m, "stream_trainer_events_trained_total", pipeline=p) == N for p in topics
            ),
            what="every event trained by each pipeline",
        )
    finally:
        assert d.terminate() == 0
    for p in topics:
        assert not sample(m, "stream_trainer_events_rejected_total", pipeline=p), p
    losses = {
        p: [sample(m, "stream_trainer_loss", pipeline=p, window=w) for w in ("batch", "smoothed")]
        + [sample(m, "stream_trainer_quality", pipeline=p, metric="log_loss")]
        for p in topics
    }
    assert None not in losses["own"], losses
    assert losses["mapped"] == losses["own"] and losses["avro"] == losses["own"], losses
    own = newest_checkpoint(workdir / "ckpt", "own")["learner"]["model"]
    for p in ("mapped", "avro"):
        theirs = newest_checkpoint(workdir / "ckpt", p)["learner"]["model"]
        assert theirs.keys() == own.keys()
        for k, v in own.items():
            assert torch.equal(theirs[k], v), (p, k)


def test_produce_from_file_names_the_pipeline_and_encodes_its_avro(broker, topic, tmp_path):
    """``produce --from-file --config``: the pipeline's topic and key path, the lines
    encoded with its schema, which its decoder reads back as the JSON lines' events."""
    from test_cli import cli

    from stream_trainer.config import load_settings
    from stream_trainer.domains.decoders import batch_decoder

    _, user = twins(20, seed=3)
    lines = tmp_path / "clicks.jsonl"
    lines.write_text("".join(json.dumps(u) + "\n" for u in user))
    (tmp_path / "schemas").mkdir()
    for sid in (1, 2):
        (tmp_path / "schemas" / f"{sid}.avsc").write_text(json.dumps(SCHEMA))
    config = tmp_path / "pipelines.yaml"
    pipelines = [{"name": "json", "kind": "clicks", "topics": [f"{topic}-j"], "fields": FIELDS},
                 {"name": "avro", "kind": "clicks", "topics": [topic], "fields": FIELDS,
                  "format": "avro", "avro": {"schemas": str(tmp_path / "schemas")}}]  # fmt: skip
    config.write_text(json.dumps({"pipelines": pipelines}))  # (JSON is YAML)
    r = cli("produce", "--from-file", str(lines), "--config", str(config), "--pipeline", "avro",
            "--partitions", "1", "--bootstrap-servers", broker.bootstrap, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = consume_all(broker.bootstrap, topic, len(user))
    assert [rec.key for rec in recs] == [u["uid"].encode() for u in user]
    assert {rec.value[:5] for rec in recs} == {b"\x00\x00\x00\x00\x02"}  # the highest id
    settings = load_settings(config)
    dec = {p.name: batch_decoder("clicks", wire=p.wire()) for p in settings.pipelines}
    assert dec["avro"]([rec.value for rec in recs]) == dec["json"](
        [json.dumps(u).encode() for u in user]
    )
    r = cli("produce", "--from-file", str(lines), "--config", str(config),
            "--bootstrap-servers", broker.bootstrap, "--quiet")  # fmt: skip
    assert r.returncode == 2 and "--pipeline: which one of json, avro?" in r.stderr, r.stderr
