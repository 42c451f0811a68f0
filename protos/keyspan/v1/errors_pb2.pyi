from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WrongPartition(_message.Message):
    __slots__ = ("key", "partition_id", "start", "end", "node_id", "address", "map_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    partition_id: str
    start: bytes
    end: bytes
    node_id: str
    address: str
    map_version: int
    def __init__(self, key: _Optional[bytes] = ..., partition_id: _Optional[str] = ..., start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., map_version: _Optional[int] = ...) -> None: ...
