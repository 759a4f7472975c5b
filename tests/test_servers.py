"""Real servers, real sockets: the response comes first, and failures keep the connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import serve, wait_for

CORE_SERVERS = ["uvicorn", "hypercorn-trio"]


@pytest.mark.parametrize("server", CORE_SERVERS)
@pytest.mark.parametrize("route", ["/wait", "/wait-sync"])
def test_response_arrives_while_the_task_is_still_blocked(
    server: str, route: str, tmp_path: Path
) -> None:
    with serve(server, "server_app:app", tmp_path) as running, running.connect() as connection:
        # The task cannot finish before the test creates the flag, which it does only once the
        # whole response is in hand. A server that held the response would time this out.
        status, _, body = connection.get(f"{route}?name=first")
        assert (status, body) == (200, f"ok {route}".encode())
        assert not (tmp_path / "first.done").exists()
        (tmp_path / "first.go").touch()
        wait_for((tmp_path / "first.done").exists, "the task's side effect")


@pytest.mark.parametrize("server", CORE_SERVERS)
def test_failing_task_leaves_the_keep_alive_connection_usable(server: str, tmp_path: Path) -> None:
    with serve(server, "server_app:app", tmp_path) as running, running.connect() as connection:
        assert connection.get("/fail?name=boom")[0] == 200
        # Wait until the failure has been handled: it is logged once the task has raised.
        wait_for(lambda: "server_app.fail_on_purpose failed" in running.log, "the error log")
        assert "task boom failed on purpose" in running.log
        status, _, body = connection.get("/ping")
        assert (status, body) == (200, b"ok /ping")
