"""The error tree: one class per wire code, unknown codes handled by class."""

from __future__ import annotations

import pytest

from librorum import errors
from librorum.errors import (
    CLASS_BY_CODE,
    ErrorClass,
    ErrorCode,
    LibrorumError,
    RemoteProtocolError,
    RequestError,
    ServerError,
    error_class,
    error_for_code,
)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_each_code_has_one_class_carrying_it(code: ErrorCode) -> None:
    exc = error_for_code(code, "why")
    assert exc.code == code
    assert exc.wire_code == code
    assert str(exc) == "why"
    assert isinstance(exc, LibrorumError)
    # The class family matches the code's class (spec 7.1).
    family = {
        ErrorClass.CONNECTION: (errors.ProtocolError, errors.TransportError),
        ErrorClass.REQUEST: (errors.RequestError, errors.ProtocolError),
        ErrorClass.SERVER: (errors.ServerError, errors.TransportError),
    }[error_class(code)]  # type: ignore[index]
    assert isinstance(exc, family)


def test_codes_and_classes_are_one_to_one() -> None:
    assert len(set(CLASS_BY_CODE.values())) == len(CLASS_BY_CODE) == len(ErrorCode)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (0x01FF, RemoteProtocolError),
        (0x02FF, RequestError),
        (0x03FF, ServerError),
        (0x7777, ServerError),
    ],
)
def test_unknown_codes_fall_back_to_their_class(code: int, cls: type[LibrorumError]) -> None:
    exc = error_for_code(code, "from a newer peer")
    assert type(exc) is cls
    assert exc.wire_code == code


def test_default_message_is_the_first_docstring_line() -> None:
    assert (
        errors.NotFoundError().message == "Nothing exists at the path (or no upload with that id)."
    )
