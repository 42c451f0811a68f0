"""keyspan.streams: the streaming pipelines (server side) and the thick client.

from keyspan.streams import Client, AsyncClient
"""

from keyspan.streams.bulk_sender import BulkPutResult
from keyspan.streams.client import AsyncClient
from keyspan.streams.entry import Entry, PartitionInfo, Stats, SweepProgress
from keyspan.streams.errors import (
    ClientClosed,
    DeadlineExceeded,
    DiskFull,
    EtagMismatch,
    InvalidArgument,
    KeyspanClientError,
    NotFound,
    NotJson,
    ResourceExhausted,
    Unavailable,
    WrongPartition,
)
from keyspan.streams.retry import RetryPolicy
from keyspan.streams.router import Router, StaticRouter
from keyspan.streams.sync_client import Client

__all__ = [
    "AsyncClient",
    "BulkPutResult",
    "Client",
    "ClientClosed",
    "DeadlineExceeded",
    "DiskFull",
    "Entry",
    "EtagMismatch",
    "InvalidArgument",
    "KeyspanClientError",
    "NotFound",
    "NotJson",
    "PartitionInfo",
    "ResourceExhausted",
    "RetryPolicy",
    "Router",
    "StaticRouter",
    "Stats",
    "SweepProgress",
    "Unavailable",
    "WrongPartition",
]
