"""Response: what it sends, what it refuses, and how it runs its background."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from helpers import Recorder, http_scope, no_receive

from bgtasks import BackgroundTask, BackgroundTasks, Response
from bgtasks.tasks import _CHECKPOINT_EVERY

# 7. Response


async def test_sends_start_then_body_with_content_length() -> None:
    send = Recorder()
    await Response(b"hello", status_code=201, headers={"x-id": "7"})(http_scope(), no_receive, send)
    assert send.types == ["http.response.start", "http.response.body"]
    assert send.messages[0]["status"] == 201
    assert send.headers == [(b"x-id", b"7"), (b"content-length", b"5")]
    assert send.body == b"hello"
    assert send.messages[1].get("more_body", False) is False


async def test_str_content_is_utf8_and_text_types_get_a_charset() -> None:
    send = Recorder()
    await Response("héllo", media_type="text/plain")(http_scope(), no_receive, send)
    assert send.body == "héllo".encode()
    assert (b"content-type", b"text/plain; charset=utf-8") in send.headers
    assert (b"content-length", b"6") in send.headers


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("application/json", b"application/json"),
        ("text/html; charset=latin-1", b"text/html; charset=latin-1"),
    ],
)
async def test_charset_is_added_only_to_text_without_one(media_type: str, expected: bytes) -> None:
    send = Recorder()
    await Response("{}", media_type=media_type)(http_scope(), no_receive, send)
    assert (b"content-type", expected) in send.headers


async def test_header_pairs_may_repeat_set_cookie() -> None:
    send = Recorder()
    headers = [("Set-Cookie", "a=1"), ("set-cookie", "b=2")]
    await Response(headers=headers)(http_scope(), no_receive, send)
    assert send.headers[:2] == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


async def test_head_gets_headers_but_no_body() -> None:
    send = Recorder()
    await Response(b"twelve bytes")(http_scope("HEAD"), no_receive, send)
    assert (b"content-length", b"12") in send.headers
    assert send.body == b""


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_get_no_body_and_no_content_length(status: int) -> None:
    send = Recorder()
    await Response(status_code=status, headers={"etag": '"x"'})(http_scope(), no_receive, send)
    assert send.headers == [(b"etag", b'"x"')]
    assert send.body == b""


@pytest.mark.parametrize("status", [99, 600, -200])
def test_status_outside_200_to_599_is_rejected(status: int) -> None:
    with pytest.raises(ValueError, match="between 200 and 599"):
        Response(status_code=status)


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_informational_status_as_the_final_response_is_rejected(status: int) -> None:
    with pytest.raises(ValueError, match=r"informational \(1xx\)"):
        Response(status_code=status)


@pytest.mark.parametrize("name", ["bad name", "x:y", "", "naïve", "new\nline"])
def test_header_name_must_be_a_token(name: str) -> None:
    with pytest.raises(ValueError):
        Response(headers={name: "v"})


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\x00b", b"a\r\nb"])
def test_header_value_with_cr_lf_or_nul_is_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="header injection"):
        Response(headers=[("x-ok", value)])


def test_media_type_with_crlf_is_rejected() -> None:
    with pytest.raises(ValueError, match="header injection"):
        Response("x", media_type="text/plain\r\nx-evil: 1")


@pytest.mark.parametrize("content", [{"a": 1}, 12, ["x"]])
def test_unsupported_content_type_is_rejected(content: Any) -> None:
    with pytest.raises(TypeError, match="serialize it first"):
        Response(content)


@pytest.mark.parametrize("status", [204, 304])
def test_body_with_204_or_304_is_rejected(status: int) -> None:
    with pytest.raises(ValueError, match="cannot have a body"):
        Response(b"x", status_code=status)


def test_content_length_is_not_accepted_from_the_caller() -> None:
    with pytest.raises(ValueError, match="content-length"):
        Response(b"abc", headers={"Content-Length": "9"})


def test_sync_function_as_background_is_rejected_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"BackgroundTask\(func, \*args\)"):
        Response(background=print)


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_non_http_scope_gets_a_clear_error(scope_type: str) -> None:
    send = Recorder()
    with pytest.raises(ValueError, match="only answers 'http' scopes"):
        await Response(b"x")({"type": scope_type}, no_receive, send)
    assert send.messages == []


# 8. After the response


async def test_tasks_run_only_after_the_final_body_was_sent() -> None:
    send = Recorder()
    seen: list[list[str]] = []

    async def check() -> None:
        seen.append(list(send.types))

    def check_sync() -> None:
        seen.append(list(send.types))

    tasks = BackgroundTasks()
    tasks.add_task(check)
    tasks.add_task(check_sync)
    await Response(b"x", background=tasks)(http_scope(), no_receive, send)
    assert seen == [["http.response.start", "http.response.body"]] * 2


async def test_task_exception_is_logged_with_name_and_traceback_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    def explode() -> None:
        raise RuntimeError("smtp down")

    tasks = BackgroundTasks()
    tasks.add_task(explode)
    tasks.add_task(log.append, "next")
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert log == ["next"]
    [record] = [r for r in caplog.records if r.name == "bgtasks"]
    assert record.levelno == logging.ERROR
    assert "test_response.test_task_exception_is_logged" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "smtp down"
    assert "in explode" in caplog.text  # the traceback reaches the task's own frame


async def test_client_gone_is_not_an_error_and_tasks_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    background = BackgroundTask(log.append, "ran")
    await Response(b"ok", background=background)(http_scope(), no_receive, Recorder(OSError()))
    assert log == ["ran"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_other_send_failure_propagates_and_names_the_dropped_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    background = BackgroundTask(log.append, "ran")
    with pytest.raises(RuntimeError, match="protocol"):
        response = Response(b"ok", background=background)
        await response(http_scope(), no_receive, Recorder(RuntimeError("protocol")))
    assert log == []
    assert "never started" in caplog.text and "builtins.list.append" in caplog.text


async def test_cancellation_propagates_with_one_warning_naming_the_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stuck() -> None:
        await anyio.sleep(60)

    tasks = BackgroundTasks()
    tasks.add_task(stuck)
    tasks.add_task(print, "never")
    with anyio.move_on_after(0.05) as scope:
        await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert scope.cancelled_caught
    warnings = [r.getMessage() for r in caplog.records if r.name == "bgtasks"]
    assert len(warnings) == 1
    assert "stuck" in warnings[0] and "never started: [builtins.print]" in warnings[0]


async def test_foreign_awaitable_background_runs_and_its_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Foreign:
        async def __call__(self) -> None:
            raise LookupError("foreign")

    await Response(b"ok", background=Foreign())(http_scope(), no_receive, Recorder())
    assert "Foreign failed" in caplog.text


async def test_background_tasks_subclass_with_several_tasks_runs_them_all() -> None:
    class AuditedTasks(BackgroundTasks):
        pass

    log: list[str] = []

    async def note(item: str) -> None:
        log.append(item)

    tasks = AuditedTasks()
    tasks.add_task(note, "one")
    tasks.add_task(note, "two")
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert log == ["one", "two"]


async def test_same_tasks_passed_to_two_responses_run_once() -> None:
    log: list[str] = []

    async def send_email() -> None:
        log.append("email")

    tasks = BackgroundTasks()
    tasks.add_task(send_email)
    for _ in range(2):
        await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert log == ["email"]


# Async tasks that finish in their first step run before Response would even make a driver;
# the rest continue in the same task, in order.


async def test_async_failures_in_the_call_and_in_the_first_step_are_logged_by_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def explode() -> None:
        raise RuntimeError("smtp down")

    async def needs_a_user(user: str) -> None:
        log.append(user)

    tasks = BackgroundTasks()
    tasks.add_task(explode)
    tasks.add_task(needs_a_user, "ann", "extra")  # type: ignore[call-arg]  # TypeError at call
    tasks.add_task(needs_a_user, "bob")
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert log == ["bob"]
    errors = [r for r in caplog.records if r.name == "bgtasks" and r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in errors if r.exc_info] == [RuntimeError, TypeError]
    assert "explode" in errors[0].getMessage() and "needs_a_user" in errors[1].getMessage()


async def test_a_task_that_suspends_finishes_in_the_callers_task_before_the_next() -> None:
    log: list[tuple[str, object]] = []

    async def slow() -> None:
        log.append(("slow starts", anyio.get_current_task().id))
        await anyio.sleep(0.001)  # a timer: asyncio waits on a future, trio parks the task
        await anyio.sleep(0)
        log.append(("slow ends", anyio.get_current_task().id))

    async def quick() -> None:
        log.append(("quick", anyio.get_current_task().id))

    tasks = BackgroundTasks()
    tasks.add_task(quick)
    tasks.add_task(slow)
    tasks.add_task(quick)
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    me = anyio.get_current_task().id
    assert log == [("quick", me), ("slow starts", me), ("slow ends", me), ("quick", me)]


async def test_a_task_added_by_a_running_task_runs_too() -> None:
    log: list[str] = []
    tasks = BackgroundTasks()

    async def first() -> None:
        log.append("first")
        tasks.add_task(second)

    async def second() -> None:
        log.append("second")

    tasks.add_task(first)
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert log == ["first", "second"]
    with pytest.raises(RuntimeError, match="already run"):
        tasks.add_task(second)


@pytest.mark.parametrize("entry", ["Response", "await tasks()"])
async def test_a_chain_that_never_suspends_lets_a_cancellation_through_and_names_the_rest(
    entry: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    async def quick(i: int) -> None:
        ran.append(i)

    tasks = BackgroundTasks()
    for i in range(3 * _CHECKPOINT_EVERY):
        tasks.add_task(quick, i)
    with anyio.CancelScope() as scope:
        scope.cancel()  # delivered at the first checkpoint, which the chain must reach
        if entry == "Response":
            await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
        else:
            await tasks()
    assert ran == list(range(_CHECKPOINT_EVERY))
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bgtasks"]
    assert warning.count("quick") == 2 * _CHECKPOINT_EVERY and "never started" in warning


# What servers refuse at send time is refused at construction (RFC 9110 field-value)


@pytest.mark.parametrize("value", ["a\x01b", "\x1f", "a\x7fb", "a\x0bb"])
def test_header_value_with_any_control_character_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        Response(headers=[("x-ok", value)])


def test_header_value_may_hold_a_horizontal_tab() -> None:
    assert Response(headers=[("x-ok", "a\tb")]).raw_headers[0] == (b"x-ok", b"a\tb")


@pytest.mark.parametrize("media_type", ["text/plain\x01", "text/\x1fplain"])
def test_media_type_with_a_control_character_is_rejected(media_type: str) -> None:
    with pytest.raises(ValueError, match="media_type contains the control character"):
        Response("x", media_type=media_type)


@pytest.mark.parametrize("value", [" a ", " a", "a\t", "\ta"])
def test_header_value_with_surrounding_whitespace_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="surrounding whitespace"):
        Response(headers={"x-ok": value})


@pytest.mark.parametrize("name", ["transfer-encoding", "Transfer-Encoding"])
def test_transfer_encoding_is_not_accepted_from_the_caller(name: str) -> None:
    with pytest.raises(ValueError, match="transfer-encoding"):
        Response(b"abc", headers={name: "chunked"})


@pytest.mark.parametrize("headers", [[{"a": "1"}], [{"a": "1", "b": "2"}], ["ab"], [("a",)], 7])
def test_malformed_headers_are_a_type_error_naming_headers(headers: Any) -> None:
    with pytest.raises(TypeError, match="headers must be a mapping"):
        Response(b"x", headers=headers)


@pytest.mark.parametrize("media_type", [[], {"a": 1}, b"text/plain"])
def test_media_type_that_is_not_a_str_is_a_type_error_naming_it(media_type: Any) -> None:
    with pytest.raises(TypeError, match="media_type must be a str"):
        Response("x", media_type=media_type)


async def test_str_content_is_encoded_in_the_declared_charset() -> None:
    send = Recorder()
    response = Response("café", media_type="text/plain; charset=latin-1")
    await response(http_scope(), no_receive, send)
    assert send.body == "café".encode("latin-1")
    assert (b"content-length", b"4") in send.headers


@pytest.mark.parametrize(
    ("media_type", "match"),
    [("text/plain; charset=ascii", "cannot be encoded"), ("text/plain; charset=nope", "know")],
)
def test_charset_that_cannot_encode_the_content_is_rejected(media_type: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Response("café", media_type=media_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charset=latin-1",
        'text/plain; charset="latin-1"',
        "text/plain; CHARSET=ISO-8859-1",
    ],
)
@pytest.mark.parametrize("name", ["content-type", "Content-Type"])
async def test_str_content_is_encoded_in_the_charset_of_the_content_type_header(
    content_type: str, name: str
) -> None:
    send = Recorder()
    await Response("café", headers={name: content_type})(http_scope(), no_receive, send)
    assert send.body == "café".encode("latin-1")
    assert (b"content-type", content_type.encode()) in send.headers
    assert (b"content-length", b"4") in send.headers


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        ("text/plain; charset=ascii", "cannot be encoded in charset 'ascii'"),
        ("text/plain; charset=nope", "content-type header declares charset 'nope'"),
    ],
)
def test_header_charset_that_cannot_encode_the_content_is_rejected(
    content_type: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Response("café", headers=[("content-type", content_type)])


@pytest.mark.parametrize(
    "media_type",
    ["text/plain; charset=utf-8", "text/html; charset=latin-1", "application/json"],
)
def test_media_type_that_contradicts_the_content_type_header_is_rejected(
    media_type: str,
) -> None:
    with pytest.raises(ValueError, match=r"media_type .* contradicts the content-type header"):
        Response(
            "café", headers={"content-type": "text/plain; charset=latin-1"}, media_type=media_type
        )


def test_media_type_that_agrees_with_the_content_type_header_is_accepted() -> None:
    response = Response(
        "café",
        headers={"content-type": "text/plain; charset=latin-1"},
        media_type="text/plain; charset=ISO-8859-1",
    )
    assert response.body == "café".encode("latin-1")


def test_content_type_given_twice_in_headers_is_rejected() -> None:
    with pytest.raises(ValueError, match="content-type 2 times"):
        Response("x", headers=[("content-type", "text/plain"), ("content-type", "text/html")])


def test_async_background_that_needs_arguments_is_rejected() -> None:
    async def notify(user: str) -> None:
        return None

    with pytest.raises(TypeError, match=r"needs arguments.*BackgroundTask\(func, \*args\)"):
        Response(b"x", background=notify)  # type: ignore[arg-type]


def test_coroutine_object_as_background_is_closed_and_rejected() -> None:
    import gc
    import warnings

    async def notify() -> None:
        return None

    gc.collect()  # what earlier tests left behind is collected outside the check below
    coroutine = notify()
    with pytest.raises(TypeError, match="coroutine object"):
        Response(b"x", background=coroutine)  # type: ignore[arg-type]
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning follows
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        del coroutine
        gc.collect()
