"""A pipeline's wire settings: the format of its messages (``format: json | avro`` and
``avro:``) and the mapping of the user's fields to those its kind needs (``fields:``),
checked at load with messages a person can act on. What they become at run time:
events/mapping.py and events/avro.py, put together in domains/decoders.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from stream_trainer.events.paths import split

Scalar = str | int | float | bool


def _path(v: str) -> str:
    split(v)  # ValueError: not a dotted path
    return v


DottedPath = Annotated[str, AfterValidator(_path)]  # ``user.id``, ``items.0.sku``


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class TsField(_Frozen):
    """``ts: {field: event_time, unit: iso8601}``."""

    field: DottedPath
    """The dotted path of your event's time."""
    unit: Literal["s", "ms", "iso8601"] = "s"
    """Unix seconds, Unix milliseconds, or an ISO-8601 string (a zone, or UTC)."""


class LabelField(_Frozen):
    """``label: {field: event, positive: [click, purchase]}``: 1 for a positive value;
    with ``negative``, 0 for those and a dead letter for any other; without, 0."""

    field: DottedPath
    """The dotted path of the field whose value is the label."""
    positive: tuple[Scalar, ...] = Field(min_length=1)
    """Values that mean 1 (a click, a purchase)."""
    negative: tuple[Scalar, ...] | None = None
    """Values that mean 0; given, any other value is dead-lettered; null: every other
    value is 0."""

    @model_validator(mode="after")
    def _disjoint(self) -> LabelField:
        both = {repr(v) for v in self.positive} & {repr(v) for v in self.negative or ()}
        if both:
            raise ValueError(f"values both positive and negative: {', '.join(sorted(both))}")
        return self


class ContextField(_Frozen):
    """``price: {field: cart.price, type: numeric}``: numeric is a weighted token,
    categorical a ``name=value`` token; auto: floats numeric, the rest categorical."""

    field: DottedPath
    """The dotted path of the context field."""
    type: Literal["categorical", "numeric", "auto"] = "auto"
    """``numeric``: a weighted token; ``categorical``: a ``name=value`` token; ``auto``:
    floats numeric, the rest categorical."""


class FieldMapping(_Frozen):
    """``fields:``: per field of the kind's event, the dotted path of the user's field
    (unset: the field of the same name). Which fields a kind has: its domain's
    ``mapped`` (checked by PipelineSettings)."""

    ts: Literal["kafka"] | TsField | DottedPath | None = None
    """The event time: a path (Unix seconds), ``{field, unit}``, or ``kafka`` (the
    record's own timestamp)."""
    user_id: DottedPath | None = None
    """clicks: the path of the user's id."""
    item_id: DottedPath | None = None
    """clicks: the path of the item's id."""
    label: LabelField | DottedPath | None = None
    """clicks: the path of a 0/1 label, or ``{field, positive, negative}`` (from values)."""
    context: dict[str, ContextField | DottedPath] | DottedPath | None = None
    """clicks: context features by name (a path, or ``{field, type}``), or the path of
    an object of them."""
    symbol: DottedPath | None = None
    """ticks: the path of the instrument's symbol."""
    price: DottedPath | None = None
    """ticks: the path of the price."""
    volume: DottedPath | None = None
    """ticks: the path of the volume (optional in the event)."""
    sensor_id: DottedPath | None = None
    """sensors: the path of the sensor's id."""
    values: dict[str, DottedPath] | DottedPath | None = None
    """sensors: each channel's path, or the path of the object of readings."""

    @field_validator("context", "values")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, dict) and not v:
            raise ValueError("give at least one field, or leave it out")
        return v

    def declared(self) -> list[str]:
        return [k for k, v in self if v is not None]

    def spec(self) -> dict[str, Any]:
        """Plain data for events/mapping.py (and an ingest worker's pickle)."""
        return self.model_dump(mode="json", exclude_none=True)


class AvroSettings(_Frozen):
    """``avro: {schema: file.avsc}`` (plain Avro binary) or ``avro: {schemas: dir/}``
    (Confluent's framing: magic byte 0, the schema id, then Avro; ``<id>.avsc`` files)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, use_attribute_docstrings=True
    )

    schema_file: Path | None = Field(None, alias="schema")
    """A ``.avsc`` file: every message is plain Avro binary of this record schema."""
    schemas: Path | None = None
    """A folder of ``<id>.avsc`` files: messages in Confluent's framing (magic byte 0,
    the schema id, then Avro)."""

    @model_validator(mode="after")
    def _one_and_valid(self) -> AvroSettings:
        from stream_trainer.events import avro

        if (self.schema_file is None) == (self.schemas is None):
            raise ValueError(
                "give either schema: FILE.avsc (plain Avro) or schemas: DIR (Confluent "
                "framing, <id>.avsc files)"
            )
        if self.schema_file is not None:
            _record(avro.load_schema(self.schema_file), str(self.schema_file))
        else:
            assert self.schemas is not None
            for sid, s in avro.load_schemas(self.schemas).items():
                _record(s, str(self.schemas / f"{sid}.avsc"))
        return self

    def spec(self) -> dict[str, str]:
        if self.schema_file is not None:
            return {"schema": str(self.schema_file)}
        return {"schemas": str(self.schemas)}


def _record(schema: Any, where: str) -> None:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError(f"{where}: the schema must be a record (the event's fields)")
