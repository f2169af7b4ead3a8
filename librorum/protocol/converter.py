"""The payload format of control frames: MessagePack maps, through one cattrs converter
(spec section 5.16, "Payload encoding").

Every control payload is a MessagePack map from field names (str) to values; fields equal to
their default are omitted; keys come in the class's field order. Types are checked strictly
(cattrs would otherwise turn ``"12"`` into ``12`` or ``b"\\x01"`` into ``(1,)``): integers must
be integers (not booleans), strings strings, binary binary, arrays arrays, maps maps. Unknown
keys are rejected.

:func:`decode_payload` is the boundary for untrusted bytes: whatever goes wrong inside msgpack,
cattrs or a validator surfaces as :class:`~librorum.errors.MalformedPayloadError` and nothing
else (the fuzz invariant).
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from typing import Final, TypeVar

import attrs
import msgpack
from cattrs.errors import BaseValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn
from cattrs.preconf.msgpack import make_converter

from librorum.errors import LocalProtocolError, MalformedPayloadError
from librorum.protocol.constants import FLAG_REPLY, Command
from librorum.protocol.messages import COMMAND_OF, REPLY_TYPES, REQUEST_TYPES, LogBatch, Message

M = TypeVar("M", bound=Message)

#: The one converter. omit_if_default keeps payloads small (a STAT request is its path).
converter: Final = make_converter(
    forbid_extra_keys=True, omit_if_default=True, detailed_validation=False
)


def _strict(kind: type) -> Callable[[object, type], object]:
    def structure(value: object, _type: type) -> object:
        # `type(...) is` rather than isinstance: bool is an int subclass and must not pass.
        if type(value) is not kind:
            msg = f"expected {kind.__name__}, got {type(value).__name__}"
            raise TypeError(msg)
        return value

    return structure


for _kind in (int, str, bytes, bool):
    converter.register_structure_hook(_kind, _strict(_kind))


def _is_homogeneous_tuple(tp: object) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook(tp: type) -> Callable[[object, type], object]:
    item_type = typing.get_args(tp)[0]
    item_hook = converter.get_structure_hook(item_type)

    def structure(value: object, _type: type) -> object:
        if type(value) is not list:
            msg = f"expected an array, got {type(value).__name__}"
            raise TypeError(msg)
        return tuple(item_hook(item, item_type) for item in value)

    return structure


converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook)


def _dict_hook(tp: type) -> Callable[[object, type], object]:
    key_type, value_type = typing.get_args(tp)
    key_hook = converter.get_structure_hook(key_type)
    value_hook = converter.get_structure_hook(value_type)

    def structure(value: object, _type: type) -> object:
        if type(value) is not dict:
            msg = f"expected a map, got {type(value).__name__}"
            raise TypeError(msg)
        return {key_hook(k, key_type): value_hook(v, value_type) for k, v in value.items()}

    return structure


def _is_dict(tp: object) -> bool:
    return typing.get_origin(tp) is dict and len(typing.get_args(tp)) == 2


converter.register_structure_hook_factory(_is_dict, _dict_hook)


def _enum_hook(tp: type[enum.Enum]) -> Callable[[object, type], object]:
    # Enum values on the wire are strings or integers; reject anything else before Enum() does
    # lookups with unhashable values.
    def structure(value: object, _type: type) -> object:
        if type(value) not in (str, int):
            msg = f"expected a {tp.__name__} value, got {type(value).__name__}"
            raise TypeError(msg)
        return tp(value)

    return structure


converter.register_structure_hook_factory(
    lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), _enum_hook
)


def _declared_map_len(payload: bytes | bytearray | memoryview) -> int:
    """The entry count in the header of the MessagePack map that starts ``payload``."""
    first = payload[0]
    if first & 0xF0 == 0x80:
        return first & 0x0F
    width = 2 if first == 0xDE else 4
    return int.from_bytes(payload[1 : 1 + width], "big")


def _has_nested_maps(cls: type) -> bool:
    for field in attrs.fields(cls):
        tp = field.type
        args = typing.get_args(tp)
        if (isinstance(tp, type) and attrs.has(tp)) or typing.get_origin(tp) is dict:
            return True
        if any(isinstance(a, type) and attrs.has(a) for a in args):
            return True
    return False


def _unique_map(pairs: list[tuple[object, object]]) -> dict[object, object]:
    # msgpack would keep the last of repeated keys; spec 5.16 makes such a map malformed, so
    # that two receivers can never read one payload differently.
    result = dict(pairs)
    if len(result) != len(pairs):
        msg = "a map repeats a key"
        raise ValueError(msg)
    return result


def _record_hook(cls: type) -> Callable[[object, type], object]:
    # cattrs' generated function assumes a mapping (it calls ``.keys()``); a record nested in
    # a message may arrive as any MessagePack value, so check first. Found by fuzz_payload.
    inner: Callable[[dict[str, object], type], object] = make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=False
    )

    def structure(value: object, _type: type) -> object:
        if type(value) is not dict:
            msg = f"expected a map for {cls.__name__}, got {type(value).__name__}"
            raise TypeError(msg)
        return inner(value, cls)

    return structure


converter.register_structure_hook_factory(attrs.has, _record_hook)

_packb: Final = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_DECODE_ERRORS: Final = (
    BaseValidationError,
    ForbiddenExtraKeysError,
    msgpack.UnpackException,
    ValueError,
    TypeError,
    KeyError,
)


def encode_message(message: Message) -> bytes:
    """Serialise a message to its payload bytes.

    Raises:
        LocalProtocolError: the message holds a value MessagePack cannot carry.
    """
    try:
        data: bytes = _packb(converter.unstructure(message))
    except (TypeError, ValueError, OverflowError) as exc:
        msg = f"cannot encode {type(message).__name__}: {exc}"
        raise LocalProtocolError(msg) from exc
    return data


def decode_payload(payload: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Decode a control payload into an instance of ``cls``.

    Raises:
        MalformedPayloadError: the payload is not a MessagePack map matching ``cls`` exactly.
    """
    try:
        if cls in _NESTED:
            raw = msgpack.unpackb(
                payload, raw=False, strict_map_key=True, object_pairs_hook=_unique_map
            )
        else:
            # A flat message holds no map but the top one (any other is a type error later),
            # so comparing the declared entry count with the decoded size finds repeated keys
            # without a Python hook per map (the hook costs a third of a small request).
            raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            first = payload[0]
            declared = first & 0x0F if first & 0xF0 == 0x80 else _declared_map_len(payload)
            if type(raw) is dict and len(raw) != declared:
                msg = "a map repeats a key"
                raise ValueError(msg)
        if type(raw) is not dict:
            msg = f"payload must be a map, got {type(raw).__name__}"
            raise TypeError(msg)
        return converter.structure(raw, cls)
    except _DECODE_ERRORS as exc:
        msg = f"malformed {cls.__name__} payload: {_describe(exc)}"
        raise MalformedPayloadError(msg) from exc
    except RecursionError as exc:
        # Deeply nested arrays in a field value; msgpack's own depth limit is deeper than
        # cattrs' recursion allows.
        msg = f"malformed {cls.__name__} payload: nested too deeply"
        raise MalformedPayloadError(msg) from exc


# LogBatch: the payload of a LOG_STREAM DATA frame, a MessagePack map too.
for _cls in {*REQUEST_TYPES.values(), *REPLY_TYPES.values(), LogBatch}:
    attrs.resolve_types(_cls)
#: Messages whose payload nests maps (records, dicts): decoded with the per-map key check.
_NESTED: Final = frozenset(
    cls for cls in {*REQUEST_TYPES.values(), *REPLY_TYPES.values()} if _has_nested_maps(cls)
)


def encode_log_batch(batch: LogBatch) -> bytes:
    """The payload of a LOG_STREAM DATA frame (spec 5.19).

    Raises:
        LocalProtocolError: the batch holds a value MessagePack cannot carry.
    """
    return encode_message(typing.cast("Message", batch))


def decode_log_batches(data: bytes | bytearray | memoryview) -> list[LogBatch]:
    """Decode the LogBatch maps of one or more whole LOG_STREAM DATA payloads laid end to
    end (a client may merge consecutive payloads; MessagePack maps delimit themselves).

    Raises:
        MalformedPayloadError: ``data`` is not a sequence of whole LogBatch maps.
    """
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        object_pairs_hook=_unique_map,
        max_buffer_size=max(len(data), 1),
    )
    try:
        unpacker.feed(data)
        batches = []
        end = 0
        for raw in unpacker:
            if type(raw) is not dict:
                msg = f"payload must be a map, got {type(raw).__name__}"
                raise TypeError(msg)
            batches.append(converter.structure(raw, LogBatch))
            end = unpacker.tell()  # after a failed attempt, tell() is past the partial map
        if end != len(data):
            msg = "a LogBatch is cut short"
            raise ValueError(msg)
    except _DECODE_ERRORS as exc:
        msg = f"malformed LogBatch payload: {_describe(exc)}"
        raise MalformedPayloadError(msg) from exc
    except RecursionError as exc:
        msg = "malformed LogBatch payload: nested too deeply"
        raise MalformedPayloadError(msg) from exc
    return batches


def message_type(command: Command, flags: int) -> type[Message]:
    """The message class a frame's payload decodes to.

    Raises:
        MalformedPayloadError: the command has no message in that direction (DATA, a GOAWAY
            without REPLY), so the frame cannot be decoded as a message.
    """
    table = REPLY_TYPES if flags & FLAG_REPLY else REQUEST_TYPES
    cls = table.get(command)
    if cls is None:
        direction = "reply" if flags & FLAG_REPLY else "request"
        msg = f"{command.name} has no {direction} message"
        raise MalformedPayloadError(msg)
    return cls


def decode_message(
    command: Command, flags: int, payload: bytes | bytearray | memoryview
) -> Message:
    """Decode a control frame's payload to the message its command and REPLY flag name.

    Raises:
        MalformedPayloadError: see :func:`message_type` and :func:`decode_payload`.
    """
    return decode_payload(payload, message_type(command, flags))


def command_of(message: Message) -> tuple[Command, bool]:
    """The command a message travels as, and whether it is a reply (server to client)."""
    return COMMAND_OF[type(message)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    if isinstance(exc, ForbiddenExtraKeysError):
        names = ", ".join(sorted(repr(k) for k in exc.extra_fields))
        return f"unknown fields {names}"[:200]
    try:
        text = str(exc) or type(exc).__name__
    except Exception:  # a third-party __str__ failing must not escape the decoder
        text = type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = [
    "command_of",
    "converter",
    "decode_message",
    "decode_payload",
    "encode_message",
    "message_type",
]
