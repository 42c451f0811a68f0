from keyspan.v1 import kv_pb2 as _kv_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATUS_UNSPECIFIED: _ClassVar[NodeStatus]
    NODE_STATUS_UP: _ClassVar[NodeStatus]
    NODE_STATUS_SUSPECT: _ClassVar[NodeStatus]
    NODE_STATUS_DOWN: _ClassVar[NodeStatus]

class PartitionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTITION_STATE_UNSPECIFIED: _ClassVar[PartitionState]
    PARTITION_STATE_SERVING: _ClassVar[PartitionState]
    PARTITION_STATE_ASSIGNED: _ClassVar[PartitionState]
    PARTITION_STATE_UNAVAILABLE: _ClassVar[PartitionState]
    PARTITION_STATE_UNASSIGNED: _ClassVar[PartitionState]
NODE_STATUS_UNSPECIFIED: NodeStatus
NODE_STATUS_UP: NodeStatus
NODE_STATUS_SUSPECT: NodeStatus
NODE_STATUS_DOWN: NodeStatus
PARTITION_STATE_UNSPECIFIED: PartitionState
PARTITION_STATE_SERVING: PartitionState
PARTITION_STATE_ASSIGNED: PartitionState
PARTITION_STATE_UNAVAILABLE: PartitionState
PARTITION_STATE_UNASSIGNED: PartitionState

class Partition(_message.Message):
    __slots__ = ("partition_id", "start", "end", "node_id", "address", "state", "revision_floor")
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    partition_id: str
    start: bytes
    end: bytes
    node_id: str
    address: str
    state: PartitionState
    revision_floor: int
    def __init__(self, partition_id: _Optional[str] = ..., start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[PartitionState, str]] = ..., revision_floor: _Optional[int] = ...) -> None: ...

class PartitionMap(_message.Message):
    __slots__ = ("version", "partitions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    def __init__(self, version: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ...) -> None: ...

class GetMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchMapRequest(_message.Message):
    __slots__ = ("after_version",)
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    after_version: int
    def __init__(self, after_version: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "probe_address", "status", "cordoned", "draining", "partitions", "entries", "bytes", "last_heartbeat_ms", "capacity", "probe")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROBE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    probe_address: str
    status: NodeStatus
    cordoned: bool
    draining: bool
    partitions: int
    entries: int
    bytes: int
    last_heartbeat_ms: int
    capacity: int
    probe: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., probe_address: _Optional[str] = ..., status: _Optional[_Union[NodeStatus, str]] = ..., cordoned: _Optional[bool] = ..., draining: _Optional[bool] = ..., partitions: _Optional[int] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., last_heartbeat_ms: _Optional[int] = ..., capacity: _Optional[int] = ..., probe: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "map_version")
    NODES_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    map_version: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., map_version: _Optional[int] = ...) -> None: ...

class NodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "force")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    force: bool
    def __init__(self, node_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("reassigned", "map_version")
    REASSIGNED_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    reassigned: _containers.RepeatedScalarFieldContainer[str]
    map_version: int
    def __init__(self, reassigned: _Optional[_Iterable[str]] = ..., map_version: _Optional[int] = ...) -> None: ...

class RepairPartitionRequest(_message.Message):
    __slots__ = ("partition_id", "to_node_id", "force")
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    partition_id: str
    to_node_id: str
    force: bool
    def __init__(self, partition_id: _Optional[str] = ..., to_node_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "ack")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    ack: Ack
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node_id", "address", "probe_address", "capacity", "hosted", "disk_id", "hosted_revisions")
    class HostedRevisionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROBE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HOSTED_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTED_REVISIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    probe_address: str
    capacity: int
    hosted: _containers.RepeatedScalarFieldContainer[str]
    disk_id: str
    hosted_revisions: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., probe_address: _Optional[str] = ..., capacity: _Optional[int] = ..., hosted: _Optional[_Iterable[str]] = ..., disk_id: _Optional[str] = ..., hosted_revisions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("partitions", "map_version", "sequence")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[_kv_pb2.PartitionStats]
    map_version: int
    sequence: int
    def __init__(self, partitions: _Optional[_Iterable[_Union[_kv_pb2.PartitionStats, _Mapping]]] = ..., map_version: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("sequence", "map_version")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    map_version: int
    def __init__(self, sequence: _Optional[int] = ..., map_version: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("map_version", "hosted", "failed")
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    hosted: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, map_version: _Optional[int] = ..., hosted: _Optional[_Iterable[str]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("welcome", "assignment", "heartbeat_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignment: Assignment
    heartbeat_ack: HeartbeatAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s", "down_after_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DOWN_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    down_after_s: float
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., down_after_s: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("map",)
    MAP_FIELD_NUMBER: _ClassVar[int]
    map: PartitionMap
    def __init__(self, map: _Optional[_Union[PartitionMap, _Mapping]] = ...) -> None: ...
