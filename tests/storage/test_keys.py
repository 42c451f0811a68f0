import pytest

from keyspan.storage.errors import EtagMismatchError, InvalidArgumentError, NotJsonError, key_text
from keyspan.storage.keys import Key, KeyRange, key_successor


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (Key.of("user", 42), Key.of("user", 100)),
        (Key.of(-1), Key.of(0)),
        (Key.of(-(2**63)), Key.of(2**63 - 1)),
        (Key.of(255), Key.of(256)),
        (Key.of("user", "ann"), Key.of("user", "bob")),
        (Key.of("a", None), Key.of("a", b"")),
        (Key.of("ab"), Key.of("b")),
        (Key.tuple("a\x00b"), Key.tuple("a\x00c")),
        (Key.tuple("a"), Key.tuple("a\x00")),
    ],
)
def test_typed_keys_sort_like_their_values(lower: Key, higher: Key) -> None:
    assert lower.raw < higher.raw
    assert lower < higher


@pytest.mark.parametrize(
    ("raw", "field_rule"),
    [(b"", "must not be empty"), (b"x" * 1025, "1025 bytes; the limit is 1024")],
)
def test_invalid_keys_name_the_rule(raw: bytes, field_rule: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field_rule) as caught:
        Key(raw)
    assert caught.value.field == "key"


def test_key_of_picks_the_natural_encoding() -> None:
    assert Key.of("user/ann").raw == b"user/ann"
    assert Key.of(b"\x00\x01").raw == b"\x00\x01"
    assert len(Key.of(7).raw) == 8
    with pytest.raises(InvalidArgumentError):
        Key.of(1.5)  # type: ignore[arg-type]


def test_key_range_membership_and_bounds() -> None:
    r = KeyRange(b"b", b"d")
    assert b"b" in r and b"c\xff" in r and b"d" not in r and b"a" not in r
    assert b"zzz" in KeyRange(b"b")
    assert r.intersect(KeyRange(b"c")) == KeyRange(b"c", b"d")
    assert r.intersect(KeyRange(b"d")) is None
    with pytest.raises(InvalidArgumentError, match="greater than start"):
        KeyRange(b"d", b"b")
    assert key_successor(b"a") > b"a" and key_successor(b"a") < b"a\x01"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"user/ann", "'user/ann'"),
        ("café".encode(), "'café'"),
        (b"0xff", "'0xff'"),  # text that looks like hex stays quoted
        (b"\xff\x00", "0xff00"),  # not UTF-8
        (b"a\nb", "0x610a62"),  # UTF-8, but not printable
    ],
)
def test_messages_show_keys_the_same_to_every_client(raw: bytes, shown: str) -> None:
    assert key_text(raw) == shown
    assert str(NotJsonError(raw)) == f"key {shown} holds bytes, not a JSON document"


def test_messages_never_show_python_bytes_literals() -> None:
    assert str(EtagMismatchError(b"a", 99, 1)) == "key 'a' is etag 1, not etag 99"
    assert str(KeyRange(b"", b"g")) == "[-inf, 'g')"
    assert str(KeyRange(b"\x00\x01")) == "[0x0001, +inf)"


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Key.int("5"), TypeError, "Key.int: needs an int, not str"),  # was the key b"5\x00"
        (lambda: Key.int(b"ab"), TypeError, "Key.int: needs an int, not bytes"),
        (lambda: Key.int(True), TypeError, "Key.int: needs an int, not bool"),
        (
            lambda: Key.int(2**63),
            InvalidArgumentError,
            r"-2\*\*63 to 2\*\*63-1 \(signed 64 bits\), not 9223372036854775808",
        ),
        (lambda: Key.text(123), TypeError, "Key.text: needs a str, not int"),  # an AttributeError
        (
            lambda: Key.text("\ud800"),
            InvalidArgumentError,
            "not valid UTF-8 text .a lone surrogate at index 0.",
        ),
        (lambda: Key.tuple("a", "\ud800"), InvalidArgumentError, "not valid UTF-8 text"),
        (lambda: Key("abc"), TypeError, "Key: raw must be bytes, not str"),  # failed later in protobuf
    ],
)
def test_typed_key_constructors_refuse_what_they_cannot_encode(
    make: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


def test_typed_key_constructors_still_take_what_they_encode() -> None:
    assert Key.int(2**63 - 1).raw == b"\xff" * 8 and Key.int(-(2**63)).raw == b"\x00" * 8
    assert Key.text("h\u00e9").raw == "h\u00e9".encode()
