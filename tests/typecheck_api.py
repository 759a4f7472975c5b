"""Checked by ``mypy --strict`` in CI, never run: the public API's types must catch misuse.

Each ``type: ignore[...]`` marks a call that mypy must reject. Strict mode warns about an
ignore that is not needed, so if ParamSpec typing ever stopped flagging a bad call, CI fails.
"""

from __future__ import annotations

from bgtasks import BackgroundTask, BackgroundTasks, Response


def send_email(to: str, *, subject: str) -> None: ...


async def notify(user_id: int) -> None: ...


tasks = BackgroundTasks()
ok: BackgroundTask = tasks.add_task(send_email, "a@example.com", subject="hi")
tasks.add_task(notify, 1)
BackgroundTask(notify, 2)
Response("ok", background=tasks)
tasks.add_task(func=send_email, to="a@example.com", subject="hi")  # Starlette's keyword form
BackgroundTask(func=notify, user_id=3)

tasks.add_task(send_email, 1, subject="hi")  # type: ignore[arg-type]
tasks.add_task(send_email, "a@example.com")  # type: ignore[call-overload]
tasks.add_task(notify, "1")  # type: ignore[call-overload]
BackgroundTask(notify)  # type: ignore[call-overload]
BackgroundTask(send_email, "a", subject="hi", cc="b")  # type: ignore[call-arg]
