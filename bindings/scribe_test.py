"""The `scribe` module's Python surface: version and the Status -> exception mapping."""

import pytest

import scribe

# absl::StatusCode values.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

MAPPED = [
    (NOT_FOUND, scribe.NotFoundError, KeyError),
    (INVALID_ARGUMENT, scribe.InvalidArgumentError, ValueError),
    (OUT_OF_RANGE, scribe.OutOfRangeError, IndexError),
    (RESOURCE_EXHAUSTED, scribe.ResourceExhaustedError, None),
    (FAILED_PRECONDITION, scribe.FailedPreconditionError, None),
    (ALREADY_EXISTS, scribe.AlreadyExistsError, None),
    (UNAVAILABLE, scribe.UnavailableError, None),
    (DATA_LOSS, scribe.DataLossError, None),
    (INTERNAL, scribe.InternalError, None),
]

UNMAPPED = [
    CANCELLED,
    UNKNOWN,
    DEADLINE_EXCEEDED,
    PERMISSION_DENIED,
    ABORTED,
    UNIMPLEMENTED,
    UNAUTHENTICATED,
]


def test_version():
    assert scribe.__version__ == "0.1.0"


def test_error_is_an_exception():
    assert issubclass(scribe.Error, Exception)
    assert scribe.Error.__module__ == "scribe"


@pytest.mark.parametrize("code,cls,builtin", MAPPED)
def test_hierarchy(code, cls, builtin):
    assert issubclass(cls, scribe.Error)
    assert cls.__module__ == "scribe"
    if builtin is not None:
        assert issubclass(cls, builtin)
    # No class is a subclass of another's builtin (e.g. NotFoundError is no ValueError).
    for _, _, other in MAPPED:
        if other is not None and other is not builtin:
            assert not issubclass(cls, other)


@pytest.mark.parametrize("code,cls,builtin", MAPPED)
def test_each_code_raises_its_class_with_the_message(code, cls, builtin):
    message = "vsd 7: chunk 12 of 40 (code %d)" % code
    with pytest.raises(cls) as raised:
        scribe._raise_status(code, message)
    assert type(raised.value) is cls
    assert str(raised.value) == message
    assert raised.value.args == (message,)
    assert raised.value.code == code


@pytest.mark.parametrize("code,cls,builtin", [m for m in MAPPED if m[2] is not None])
def test_builtin_handlers_catch_mapped_errors(code, cls, builtin):
    with pytest.raises(builtin):
        scribe._raise_status(code, "caught by the builtin")


@pytest.mark.parametrize("code", UNMAPPED)
def test_other_codes_raise_the_base_class(code):
    with pytest.raises(scribe.Error) as raised:
        scribe._raise_status(code, "plain")
    assert type(raised.value) is scribe.Error
    assert raised.value.code == code
    assert str(raised.value) == "plain"


def test_ok_raises_nothing():
    assert scribe._raise_status(OK, "ignored") is None


def test_not_a_status_code_is_a_value_error_not_a_scribe_error():
    for code in (-1, 17, 1 << 20):
        with pytest.raises(ValueError) as raised:
            scribe._raise_status(code, "x")
        assert not isinstance(raised.value, scribe.Error)


def test_non_ascii_message_survives():
    message = "volume «prod» — 4 KiB écrit"
    with pytest.raises(scribe.DataLossError) as raised:
        scribe._raise_status(DATA_LOSS, message)
    assert str(raised.value) == message


def test_key_error_str_is_not_quoted():
    # KeyError's own str() would give "'missing'"; scribe errors print the message.
    with pytest.raises(KeyError) as raised:
        scribe._raise_status(NOT_FOUND, "missing")
    assert str(raised.value) == "missing"
