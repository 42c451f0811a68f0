"""A node's identity lives in its data dir: the node id and the disk id control checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyspan.services.config import NodeConfig
from keyspan.services.node.process import resolve_node_id
from keyspan.storage.errors import ConfigError


def test_a_data_dir_keeps_its_node_id_and_disk_id(tmp_path: Path) -> None:
    config = NodeConfig(data=tmp_path / "n", id="n1")
    node_id, disk_id = resolve_node_id(config)
    assert node_id == "n1" and len(disk_id) == 32
    assert resolve_node_id(NodeConfig(data=tmp_path / "n")) == ("n1", disk_id)  # a restart
    with pytest.raises(ConfigError, match="belongs to node 'n1', not 'n2'"):
        resolve_node_id(NodeConfig(data=tmp_path / "n", id="n2"))

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "node_id").write_text("n3\n")  # a data dir from before disk ids
    node_id, disk_id = resolve_node_id(NodeConfig(data=tmp_path / "old"))
    assert node_id == "n3" and resolve_node_id(NodeConfig(data=tmp_path / "old"))[1] == disk_id
    assert resolve_node_id(NodeConfig(data=tmp_path / "other", id="n1"))[1] != disk_id
