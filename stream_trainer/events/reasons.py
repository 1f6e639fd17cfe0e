"""Rejection reasons: a small fixed set, so they make low-cardinality metric labels."""

EMPTY = "empty"
TOO_LARGE = "too_large"
INVALID_UTF8 = "invalid_utf8"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
NOT_AVRO = "not_avro"  # bytes that are not Avro for their schema (or bad framing)
UNKNOWN_SCHEMA = "unknown_schema"  # a Confluent schema id with no schema file
DUPLICATE = "duplicate"
FEATURIZER_ERROR = "featurizer_error"

ALL = (
    EMPTY,
    TOO_LARGE,
    INVALID_UTF8,
    NOT_JSON,
    TOO_DEEP,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    NON_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    NOT_AVRO,
    UNKNOWN_SCHEMA,
    DUPLICATE,
    FEATURIZER_ERROR,
)
