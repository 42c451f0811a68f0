"""The README, `--help` and the proto stay true to the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from keyspan.services.cli import cli
from keyspan.services.config import ServeConfig, config_fields
from keyspan.v1 import kv_pb2

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", [name for name, _, _ in config_fields(ServeConfig)])
def test_every_serve_setting_is_in_the_readme_and_help(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    assert (f"`{flag}`" in README or f"`{flag} " in README) and f"`KEYSPAN_{name.upper()}`" in README
    assert flag in CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output


@pytest.mark.parametrize("rpc", [m.name for m in kv_pb2.DESCRIPTOR.services_by_name["KV"].methods])
def test_every_rpc_is_in_the_readme_and_commented_in_the_proto(rpc: str) -> None:
    assert f"`{rpc}`" in README
    proto = (ROOT / "protos/keyspan/v1/kv.proto").read_text()
    line = next(i for i, text in enumerate(proto.splitlines()) if text.strip().startswith(f"rpc {rpc}("))
    assert proto.splitlines()[line - 1].strip().startswith("//")


@pytest.mark.parametrize("proto", sorted((ROOT / "protos/keyspan/v1").glob("*.proto")), ids=lambda p: p.name)
def test_every_field_and_message_has_a_comment(proto: Path) -> None:
    import re

    lines = proto.read_text().splitlines()
    field = re.compile(r"^\s*(optional |repeated )?[\w.]+ \w+ = \d+;|^\s*(message|service|enum) \w+")
    bare = [
        f"{proto.name}:{i + 1}: {line.strip()}"
        for i, line in enumerate(lines)
        if field.match(line) and not lines[i - 1].strip().startswith("//") and "{}" not in line
    ]
    assert bare == []
