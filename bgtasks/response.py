"""Response: a complete HTTP response as an ASGI app, then its background work.

Everything that can be wrong with a response is checked in ``__init__``, so that a bad status,
header or body fails in the handler that built it, never halfway through a send. ``__call__``
only sends, then runs the background.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ._types import Receive, Scope, Send
from .tasks import (
    BackgroundTask,
    BackgroundTasks,
    is_async_callable,
    log_dropped,
    logger,
    run_background,
    run_tasks,
)

__all__ = ["Response"]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n\x00]")

HeadersInput = Mapping[str, str] | Iterable[tuple[str, str]]


def _coerce_content(content: object) -> bytes:
    if content is None:
        return b""
    if type(content) is bytes:
        return content
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise TypeError(
        f"content must be str, bytes or None, got {type(content).__name__}; "
        f"serialize it first, e.g. json.dumps(data)"
    )


def _check_status(status_code: object, body: bytes) -> None:
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise TypeError(f"status_code must be an int, got {status_code!r}")
    if not 100 <= status_code <= 599:
        raise ValueError(f"status_code must be between 100 and 599, got {status_code}")
    if body and (status_code < 200 or status_code in (204, 304)):
        raise ValueError(f"a {status_code} response cannot have a body; drop the content")


# Small ints are singletons in CPython, so `status_code is _OK` is a cheap exact test for the
# int 200; anything else (another status, 200.0, True) takes the checked path.
_OK = 200


def _build(
    content: object, status_code: int, headers: HeadersInput | None, media_type: str | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = _coerce_content(content)
    _check_status(status_code, body)
    raw_headers = [] if headers is None else _header_pairs(headers)
    names = {name for name, _ in raw_headers}
    if b"content-length" in names:
        raise ValueError("do not set content-length; Response sets it from the content")
    if media_type is not None and b"content-type" not in names:
        raw_headers.append(_content_type(media_type))
    if status_code >= 200 and status_code != 204 and status_code != 304:
        raw_headers.append((b"content-length", b"%d" % len(body)))
    return body, raw_headers


_content_types: dict[str, tuple[bytes, bytes]] = {}


def _content_type(media_type: str) -> tuple[bytes, bytes]:
    # Apps use a handful of media types; validate and encode each once.
    header = _content_types.get(media_type)
    if header is None:
        if not isinstance(media_type, str):
            raise TypeError(f"media_type must be a str such as 'text/plain', got {media_type!r}")
        value = media_type
        if value.startswith("text/") and "charset=" not in value.lower():
            value += "; charset=utf-8"
        [header] = _header_pairs([("content-type", value)])
        if len(_content_types) < 256:
            _content_types[media_type] = header
    return header


def _encode(text: str | bytes, what: str) -> bytes:
    if isinstance(text, bytes):
        return text
    if isinstance(text, str):
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} {text!r} is not latin-1; percent-encode it or use RFC 8187 encoding"
            ) from None
    raise TypeError(f"{what} must be str or bytes, got {type(text).__name__}")


def _header_pairs(headers: HeadersInput | None) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = []
    for item in items:
        if isinstance(item, (str, bytes)) or len(item) != 2:
            raise TypeError(f"headers must be a mapping or (name, value) pairs, got item {item!r}")
        name = _encode(item[0], "header name")
        value = _encode(item[1], f"value of header {item[0]!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {item[0]!r} is not an HTTP token (RFC 9110, 5.1)")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(
                f"value of header {item[0]!r} contains CR, LF or NUL, which would allow header "
                f"injection; remove those characters"
            )
        pairs.append((name.lower(), value))
    return pairs


class Response:
    """A complete HTTP response, sent as an ASGI app, followed by its background work.

    ``__call__`` sends ``http.response.start`` and one ``http.response.body``, and only then
    awaits ``background``:

    * ``content`` is bytes or str (UTF-8); content-length is set from it. ``text/*`` media
      types get ``; charset=utf-8``. ``headers`` is a mapping or (name, value) pairs, so a
      header such as set-cookie can repeat.
    * HEAD requests get the headers but no body. 1xx, 204 and 304 get neither body nor
      content-length.
    * ``background`` is any callable that takes no arguments and returns an awaitable: a
      BackgroundTask, BackgroundTasks, or another framework's background object. A failing task
      is logged as an error on the ``bgtasks`` logger with its name and traceback; it never
      escapes, because under uvicorn that would close the keep-alive connection.
    * If the client has gone away (``send`` raises OSError), the background still runs and the
      call returns normally. If ``send`` fails otherwise, the background is dropped, logged,
      and the error propagates.
    * Cancellation propagates; a warning names the tasks that were cancelled or never started.

    Bad input raises TypeError or ValueError here, in the constructor.
    """

    __slots__ = ("status_code", "body", "raw_headers", "background")

    def __init__(
        self,
        content: str | bytes | bytearray | memoryview | None = None,
        status_code: int = 200,
        headers: HeadersInput | None = None,
        media_type: str | None = None,
        background: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        if type(content) is bytes and status_code is _OK and headers is None and media_type is None:
            # The common case, kept fast: it needs no checks beyond those above.
            body = content
            raw_headers = [(b"content-length", b"%d" % len(content))]
        else:
            body, raw_headers = _build(content, status_code, headers, media_type)
        if background is not None and not (
            type(background) is BackgroundTasks
            or type(background) is BackgroundTask
            or isinstance(background, (BackgroundTasks, BackgroundTask))
            or is_async_callable(background)
        ):
            raise TypeError(
                f"background must be an async callable with no arguments, such as "
                f"BackgroundTask(func, *args) or BackgroundTasks(); got {background!r}"
            )
        self.status_code = status_code
        self.body = body
        self.raw_headers = raw_headers
        self.background = background

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            method = scope["method"]  # every http scope has one; no other scope type does
        except KeyError:
            raise ValueError(
                f"Response only answers 'http' scopes, got {scope.get('type')!r}; route "
                f"{scope.get('type')!r} scopes to an app that handles them"
            ) from None
        body = self.body if method != "HEAD" else b""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": body})
        except OSError:
            # ASGI 2.4: the client has gone away. The work still has to happen.
            logger.debug("client went away before the response was sent; running background anyway")
        except BaseException:
            if self.background is not None:
                log_dropped(
                    self.background, "the response was not sent, so its background was dropped"
                )
            raise
        background = self.background
        if type(background) is BackgroundTasks:
            await run_tasks(background)  # the common case, one call less
        elif background is not None:
            await run_background(background)
