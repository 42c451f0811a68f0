"""keyspan: a streaming-first, range-partitioned key-value and JSON-document store over gRPC."""

__version__ = "0.1.0"
