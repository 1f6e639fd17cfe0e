"""Kafka TLS/SASL settings pass through; secrets come from env or files and never show."""

from __future__ import annotations

import logging

import pytest

from stream_trainer.cli import main
from stream_trainer.config import load_settings, parse_settings
from stream_trainer.edges.tls import security_kwargs
from stream_trainer.errors import ConfigError

PIPE = {"pipelines": [{"name": "a", "kind": "clicks", "topics": ["t"]}]}


def test_plaintext_by_default():
    assert security_kwargs(parse_settings(PIPE).kafka) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_passes_through_with_secret_from_a_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t\n")
    k = parse_settings(
        {
            **PIPE,
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "trainer",
                "sasl_plain_password_file": str(secret),
                "ssl_cafile": "/etc/ca.pem",
            },
        }
    ).kafka
    assert security_kwargs(k) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": "/etc/ca.pem",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "trainer",
        "sasl_plain_password": "s3cr3t",
    }


def test_secret_from_the_environment_is_never_printed(tmp_path, capsys, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "kafka: {security_protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, "
        "sasl_plain_username: u}\npipelines: [{name: a, kind: clicks, topics: [t]}]\n"
    )
    env = {"STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD": "12345"}
    s = load_settings(cfg, environ=env)
    assert security_kwargs(s.kafka)["sasl_plain_password"] == "12345"  # a string, as given
    assert "12345" not in repr(s) and "12345" not in str(s.model_dump())
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.DEBUG):
        mp.setenv("STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD", "12345")
        assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "12345" not in out.out + out.err + caplog.text
    assert "sasl_plain_password: '**********'" in out.out


def test_sasl_without_a_password_is_a_clear_error():
    with pytest.raises(ConfigError, match="SASL needs a password"):
        parse_settings(
            {
                **PIPE,
                "kafka": {
                    "security_protocol": "SASL_SSL",
                    "sasl_mechanism": "PLAIN",
                    "sasl_plain_username": "u",
                },
            }
        )


def test_unreadable_secret_file_is_a_clear_error(tmp_path):
    k = parse_settings(
        {
            **PIPE,
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_plain_password_file": str(tmp_path / "missing"),
            },
        }
    ).kafka
    with pytest.raises(ConfigError, match="sasl_plain_password_file: cannot read"):
        security_kwargs(k)


def test_broker_probe_needs_an_answer_not_just_a_connection():
    """A listener that accepts but never answers (a frozen broker) is not 'up'."""
    import socket

    from stream_trainer.edges.admin import broker_answers

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not broker_answers(f"127.0.0.1:{port}", timeout_s=0.3)
    assert not broker_answers("127.0.0.1:1", timeout_s=0.3)
