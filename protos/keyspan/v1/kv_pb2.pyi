from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("key", "value", "etag", "expires_at_ms", "ttl_s", "json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    etag: int
    expires_at_ms: int
    ttl_s: float
    json: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., etag: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., ttl_s: _Optional[float] = ..., json: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "paths")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[bytes] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value", "etag", "expires_at_ms", "json")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    etag: int
    expires_at_ms: int
    json: bool
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., etag: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., json: _Optional[bool] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "ttl_s", "if_etag", "if_absent", "json", "keep_ttl")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    IF_ETAG_FIELD_NUMBER: _ClassVar[int]
    IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    KEEP_TTL_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    ttl_s: float
    if_etag: int
    if_absent: bool
    json: bool
    keep_ttl: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., ttl_s: _Optional[float] = ..., if_etag: _Optional[int] = ..., if_absent: _Optional[bool] = ..., json: _Optional[bool] = ..., keep_ttl: _Optional[bool] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("etag",)
    ETAG_FIELD_NUMBER: _ClassVar[int]
    etag: int
    def __init__(self, etag: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "if_etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IF_ETAG_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    if_etag: int
    def __init__(self, key: _Optional[bytes] = ..., if_etag: _Optional[int] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class PathValue(_message.Message):
    __slots__ = ("path", "value")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    path: str
    value: str
    def __init__(self, path: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class PatchRequest(_message.Message):
    __slots__ = ("key", "merge_patch", "set", "remove", "if_etag")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MERGE_PATCH_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    IF_ETAG_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    merge_patch: str
    set: _containers.RepeatedCompositeFieldContainer[PathValue]
    remove: _containers.RepeatedScalarFieldContainer[str]
    if_etag: int
    def __init__(self, key: _Optional[bytes] = ..., merge_patch: _Optional[str] = ..., set: _Optional[_Iterable[_Union[PathValue, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ..., if_etag: _Optional[int] = ...) -> None: ...

class PatchResponse(_message.Message):
    __slots__ = ("etag", "value")
    ETAG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    etag: int
    value: bytes
    def __init__(self, etag: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PartitionStats(_message.Message):
    __slots__ = ("partition_id", "start", "end", "approximate_entries", "bytes", "expired_entries", "revision")
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    partition_id: str
    start: bytes
    end: bytes
    approximate_entries: int
    bytes: int
    expired_entries: int
    revision: int
    def __init__(self, partition_id: _Optional[str] = ..., start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., approximate_entries: _Optional[int] = ..., bytes: _Optional[int] = ..., expired_entries: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("partitions", "approximate_entries", "bytes")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStats]
    approximate_entries: int
    bytes: int
    def __init__(self, partitions: _Optional[_Iterable[_Union[PartitionStats, _Mapping]]] = ..., approximate_entries: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("start", "end", "limit", "paths", "reverse", "credits", "close_after_done")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_AFTER_DONE_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    limit: int
    paths: _containers.RepeatedScalarFieldContainer[str]
    reverse: bool
    credits: int
    close_after_done: bool
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., limit: _Optional[int] = ..., paths: _Optional[_Iterable[str]] = ..., reverse: _Optional[bool] = ..., credits: _Optional[int] = ..., close_after_done: _Optional[bool] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("entries", "resume_key", "done")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    RESUME_KEY_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    resume_key: bytes
    done: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., resume_key: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class BulkPutRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class BulkPutResponse(_message.Message):
    __slots__ = ("accepted", "next_key")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    next_key: bytes
    def __init__(self, accepted: _Optional[int] = ..., next_key: _Optional[bytes] = ...) -> None: ...

class SweepRequest(_message.Message):
    __slots__ = ("start", "end", "max_deletes_per_s")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MAX_DELETES_PER_S_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    max_deletes_per_s: float
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., max_deletes_per_s: _Optional[float] = ...) -> None: ...

class SweepResponse(_message.Message):
    __slots__ = ("scanned", "deleted", "done")
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    scanned: int
    deleted: int
    done: bool
    def __init__(self, scanned: _Optional[int] = ..., deleted: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...
