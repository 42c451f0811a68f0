import pytest

from keyspan.storage.shard import Row
from keyspan.streams.scan import entry_of, response_of
from keyspan.v1 import kv_pb2

ROWS = [
    Row(b"a", b"plain", False, 7, None),
    Row(b"b", b'{"x": 1}', True, 8, None),
    Row(b"c", b"", False, 9, 1_700_000_000_000),
    Row(b"d", b"\x00\xff", True, 10, 1_800_000_000_000),
]


@pytest.mark.parametrize("rows", [ROWS, ROWS[:1], []])
def test_a_scan_response_is_byte_for_byte_what_entry_messages_make(rows: list[Row]) -> None:
    expected = kv_pb2.ScanResponse(entries=[entry_of(r) for r in rows], resume_key=b"r", done=True)
    got = response_of(rows, b"r", True)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
