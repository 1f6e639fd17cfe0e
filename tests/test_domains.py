"""The domain registry: every built-in domain builds and decodes from its defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stream_trainer import domains
from stream_trainer.config import parse_settings
from stream_trainer.domains.decoders import decoder_for
from stream_trainer.errors import ConfigError
from stream_trainer.events import Rejected
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.pipeline.build import output_topic


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        domains.get("clickz")
    assert str(info.value) == (
        "unknown kind 'clickz': should be 'clicks', 'ticks', 'sensors', 'tabular' or 'custom'"
    )
    with pytest.raises(ConfigError, match="decode"):
        decoder_for("decode")
    doc = {"pipelines": [{"name": "a", "kind": "clickz", "topics": ["t"]}]}
    with pytest.raises(ConfigError) as info:
        parse_settings(doc)
    assert str(info.value).startswith(
        "config: pipelines.0.kind: Input should be 'clicks', 'ticks', 'sensors', 'tabular' or "
        "'custom'"
    )


def test_the_builtin_kinds():
    assert domains.KINDS == ("clicks", "ticks", "sensors", "tabular")
    assert domains.ALL_KINDS == ("clicks", "ticks", "sensors", "tabular", "custom")
    custom = domains.get("custom")
    assert not custom.builtin and custom.generator is None and custom.key_field is None


@pytest.mark.parametrize("kind", [k for k in domains.KINDS if domains.get(k).generator])
def test_builtin_domain_builds_from_defaults_and_decodes_its_own_stream(kind):
    d = domains.get(kind)
    featurizer = d.featurizer()
    model = d.model(featurizer.input_spec)
    assert isinstance(model, torch.nn.Module)
    decode = decoder_for(kind, channels=d.decoder_channels(featurizer))
    events = [decode(json.dumps(e).encode()) for e in d.generator(seed=0, count=300)]
    assert not [e for e in events if isinstance(e, Rejected)]
    assert all(d.key_field in e for e in events)
    fb = featurizer.featurize(events)
    assert len(fb) > 0
    out = model(**{k: torch.from_numpy(v) for k, v in fb.inputs.items()})
    assert out.shape == fb.targets.shape
    # the registry's wrappers build the same as the domain's own factories
    assert type(build_featurizer(kind, {})) is type(featurizer)
    assert type(build_model(kind, {}, featurizer)) is type(model)


def test_default_output_topics_and_quality_profiles():
    def spec(kind: str):
        p = {"name": "a", "kind": kind, "topics": ["in", "more"]}
        if kind == "custom":
            p |= {"model": "m:f", "featurizer": "f:C"}
        return parse_settings({"pipelines": [p]}).pipelines[0]

    outputs = [output_topic(spec(k)) for k in domains.ALL_KINDS]
    assert outputs == [None, None, "in.anomalies", None, None]
    profiles = [domains.get(k).quality_profile("regression") for k in domains.ALL_KINDS]
    assert profiles == ["binary", "direction", "regression", "errors", "regression"]
    assert domains.get("tabular").quality_profile("multiclass") == "classification"
    assert domains.get("ticks").quality_profile("binary") == "binary"


def test_sensor_decoder_takes_the_featurizers_channels():
    sensors = domains.get("sensors")
    featurizer = sensors.featurizer(channels=["temp"])
    assert sensors.decoder_channels(featurizer) == ("temp",)
    assert domains.get("ticks").decoder_channels(featurizer) == ()
    event = {"ts": 1.7e9, "sensor_id": "s1", "values": {"temp": 1.0, "humidity": 2.0}}
    decoded = decoder_for("sensors", channels=("temp",))(json.dumps(event).encode())
    assert decoded["values"] == {"temp": 1.0}


def test_the_registry_and_settings_import_no_torch():
    code = (
        "import sys, stream_trainer.domains, stream_trainer.config; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
