"""Atomic outputs keep the permissions any new file would get: a bundle or a model that a web server,
an OTA agent or a teammate reads must not come out private (mkstemp/mkdtemp make 0600/0700)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from edgekit.files import atomic_dir, write_text


def test_atomic_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.json", "{}\n")
        with atomic_dir(tmp_path / "bundle") as d:
            (d / "x").write_text("x")
        os.umask(0o027)
        write_text(tmp_path / "team.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "team.json").stat().st_mode) == 0o640
