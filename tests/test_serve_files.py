"""`discovery serve` writes its store and secrets readable by their owner only."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.serve_process import ServeProcess


def test_data_files_are_private(serve_processes: Callable[..., ServeProcess]) -> None:
    server = serve_processes().start()
    server.stop()
    files = [p for p in server.data_dir.iterdir() if p.name != "serve.log"]
    names = {p.name for p in files}
    assert {"discovery.db", "server.secret"} <= names
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
