"""Kafka client security: the settings' TLS and SASL options as kafka-python keyword
arguments (secrets read from the environment or files), and a matching TLS context
for the broker probe."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from stream_trainer.config import KafkaSettings
from stream_trainer.errors import ConfigError, StreamTrainerError


def _secret(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    """A secret given inline (or through the environment), or read from a file."""
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"kafka.{name}_file: cannot read {path}: {err.strerror}") from None


def security_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for TLS and SASL (only the protocol for PLAINTEXT).

    >>> security_kwargs(KafkaSettings())
    {'security_protocol': 'PLAINTEXT'}
    """
    k = settings
    out: dict[str, Any] = {"security_protocol": k.security_protocol}
    if "SSL" in k.security_protocol:
        out["ssl_check_hostname"] = k.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(k, name)
            if value is not None:
                out[name] = str(value)
        password = _secret(k.ssl_password, k.ssl_password_file, "ssl_password")
        if password is not None:
            out["ssl_password"] = password
    if k.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = k.sasl_mechanism
        out["sasl_plain_username"] = k.sasl_plain_username
        out["sasl_plain_password"] = _secret(
            k.sasl_plain_password, k.sasl_plain_password_file, "sasl_plain_password"
        )
    return out


def ssl_context(security: dict[str, Any]) -> ssl.SSLContext | None:
    """A TLS context matching the clients' settings, for the probe; None for plaintext."""
    if "SSL" not in security.get("security_protocol", "PLAINTEXT"):
        return None
    ctx = ssl.create_default_context(cafile=security.get("ssl_cafile"))
    ctx.check_hostname = bool(security.get("ssl_check_hostname", True))
    if security.get("ssl_certfile"):
        ctx.load_cert_chain(
            security["ssl_certfile"], security.get("ssl_keyfile"), security.get("ssl_password")
        )
    return ctx


def client_security(settings: KafkaSettings) -> tuple[dict[str, Any], ssl.SSLContext | None]:
    """The clients' keyword arguments and the probe's TLS context, built once at start-up
    so that unreadable secret files or certificates fail early with one message."""
    try:
        security = security_kwargs(settings)
        return security, ssl_context(security)
    except (OSError, ValueError) as err:
        raise StreamTrainerError(f"kafka TLS settings: {err}") from None
