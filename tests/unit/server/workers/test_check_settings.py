"""Workers share fixed ports: port 0 (a different free port per worker) is refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import check_settings
from server.settings import ServerSettings


def test_several_workers_need_fixed_ports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--workers"):
        check_settings(ServerSettings(tmp_path, grpc_port=0, workers=2))
    check_settings(ServerSettings(tmp_path, grpc_port=0, workers=1))
    check_settings(ServerSettings(tmp_path, workers=2))
