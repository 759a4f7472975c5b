"""Response: a complete HTTP response as an ASGI app, then its background work.

Everything that can be wrong with a response is checked in ``__init__``, so that a bad status,
header or body fails in the handler that built it, never halfway through a send. ``__call__``
only sends, then runs the background.
"""

from __future__ import annotations

import codecs
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
    run_ready,
)

__all__ = ["Response"]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 field-value: no control character but horizontal tab, no surrounding whitespace.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHARSET = re.compile(r"charset\s*=\s*\"?([^\";\s]+)", re.IGNORECASE)
# Set by Response itself, or a framing the server owns: a caller's value would contradict it.
_RESERVED = {
    b"content-length": "do not set content-length; Response sets it from the content",
    b"transfer-encoding": (
        "do not set transfer-encoding; Response sends its whole body with content-length, "
        "and the server chooses the framing"
    ),
}

HeadersInput = Mapping[str, str] | Iterable[tuple[str, str]]


def _coerce_content(content: object) -> bytes | str:
    # str stays str here: it is encoded once the content-type that is sent is known.
    if content is None:
        return b""
    if type(content) is bytes or isinstance(content, str):
        return content
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise TypeError(
        f"content must be str, bytes or None, got {type(content).__name__}; "
        f"serialize it first, e.g. json.dumps(data)"
    )


def _charset(value: str) -> str | None:
    found = _CHARSET.search(value)
    return found.group(1) if found is not None else None


def _codec(charset: str, source: str) -> str:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise ValueError(
            f"{source} declares charset {charset!r}, which Python does not know; use a charset "
            f"such as utf-8"
        ) from None


def _encode_text(content: str, content_type: str | None, source: str) -> bytes:
    # str content is encoded in the charset of the content-type that is sent, UTF-8 when it
    # names none.
    charset = _charset(content_type) if content_type is not None else None
    if charset is None:
        return content.encode()
    try:
        return content.encode(_codec(charset, source))
    except UnicodeEncodeError as error:
        raise ValueError(
            f"content cannot be encoded in charset {charset!r} that {source} declares "
            f"({error.reason} at {error.start}); use charset=utf-8, or pass bytes"
        ) from None


def _check_agreement(media_type: str, header: str) -> None:
    # Both given: the header is what is sent, so media_type must not say otherwise.
    def essence(value: str) -> str:
        return value.split(";", 1)[0].strip().lower()

    mine, theirs = _charset(media_type), _charset(header)
    header_source = "the content-type header"
    if essence(media_type) != essence(header) or (
        mine is not None
        and (theirs is None or _codec(mine, "media_type") != _codec(theirs, header_source))
    ):
        raise ValueError(
            f"media_type {media_type!r} contradicts the content-type header {header!r}, which "
            f"is the one sent; give only one of them"
        )


def _check_status(status_code: object, body: bytes) -> None:
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise TypeError(f"status_code must be an int, got {status_code!r}")
    if 100 <= status_code <= 199:
        raise ValueError(
            f"status_code {status_code} is informational (1xx), not a final response: the "
            f"client would wait for one that never comes. Use a 2xx-5xx status"
        )
    if not 200 <= status_code <= 599:
        raise ValueError(f"status_code must be between 200 and 599, got {status_code}")
    if body and status_code in (204, 304):
        raise ValueError(f"a {status_code} response cannot have a body; drop the content")


# Small ints are singletons in CPython, so `status_code is _OK` is a cheap exact test for the
# int 200; anything else (another status, 200.0, True) takes the checked path.
_OK = 200


def _build(
    content: object, status_code: int, headers: HeadersInput | None, media_type: str | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if media_type is not None:
        content_type = _content_type(media_type)  # checked first: it may decide the encoding
    coerced = _coerce_content(content)
    raw_headers = [] if headers is None else _header_pairs(headers)
    names = {name for name, _ in raw_headers}
    for name, message in _RESERVED.items():
        if name in names:
            raise ValueError(message)
    sent_type, source = media_type, "media_type"
    if b"content-type" in names:
        declared = [value for name, value in raw_headers if name == b"content-type"]
        if len(declared) > 1:
            raise ValueError(f"headers give content-type {len(declared)} times; give it once")
        sent_type, source = declared[0].decode("latin-1"), "the content-type header"
        if media_type is not None:
            _check_agreement(media_type, sent_type)
    elif media_type is not None:
        raw_headers.append(content_type)
    body = coerced if isinstance(coerced, bytes) else _encode_text(coerced, sent_type, source)
    _check_status(status_code, body)
    if status_code != 204 and status_code != 304:
        raw_headers.append((b"content-length", b"%d" % len(body)))
    return body, raw_headers


_content_types: dict[str, tuple[bytes, bytes]] = {}


def _content_type(media_type: str) -> tuple[bytes, bytes]:
    # Apps use a handful of media types; validate and encode each once.
    if type(media_type) is not str:
        raise TypeError(f"media_type must be a str such as 'text/plain', got {media_type!r}")
    header = _content_types.get(media_type)
    if header is None:
        value = media_type
        if value.startswith("text/") and "charset=" not in value.lower():
            value += "; charset=utf-8"
        [header] = _header_pairs([("content-type", value)], "media_type")
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


def _header_pairs(
    headers: HeadersInput | None, argument: str = "headers"
) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, (str, bytes)) or not isinstance(headers, (Mapping, Iterable)):
        raise TypeError(f"headers must be a mapping or (name, value) pairs, got {headers!r}")
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"headers must be a mapping or (name, value) pairs, got item {item!r}; "
                f"write headers={{'x-name': 'value'}} or [('x-name', 'value')]"
            )
        name = _encode(item[0], "header name")
        value = _encode(item[1], f"value of header {item[0]!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {item[0]!r} is not an HTTP token (RFC 9110, 5.1)")
        what = "media_type" if argument == "media_type" else f"value of header {item[0]!r}"
        control = _CONTROL.search(value)
        if control is not None:
            raise ValueError(
                f"{what} contains the control character {control.group()!r}, which servers "
                f"refuse (CR and LF would allow header injection); remove it"
            )
        if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            raise ValueError(f"{what} {item[1]!r} has surrounding whitespace; strip it")
        pairs.append((name.lower(), value))
    return pairs


def _check_background(background: object) -> None:
    import inspect  # only foreign backgrounds get here; inspect costs ~4 ms to import

    if inspect.iscoroutine(background):
        background.close()  # it can never be awaited now; closing avoids a second warning
        raise TypeError(
            "background got a coroutine object; pass the function and its arguments: "
            "background=BackgroundTask(notify, user) instead of background=notify(user)"
        )
    if not is_async_callable(background):
        raise TypeError(
            f"background must be an async callable with no arguments, such as "
            f"BackgroundTask(func, *args) or BackgroundTasks(); got {background!r}"
        )
    try:
        signature = inspect.signature(background)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no signature to check (some builtins, C callables)
        return
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            f"background {background!r} needs arguments {signature}; Response calls it with "
            f"none. Wrap it: background=BackgroundTask(func, *args)"
        ) from None


class Response:
    """A complete HTTP response, sent as an ASGI app, followed by its background work.

    ``__call__`` sends ``http.response.start`` and one ``http.response.body``, and only then
    awaits ``background``:

    * ``content`` is bytes or str; str is encoded in the charset of the content-type that is
      sent: a content-type in ``headers`` if given, else ``media_type`` (UTF-8 when it names
      none, and ``text/*`` media types then get ``; charset=utf-8``). A ``media_type`` that
      contradicts a content-type header is refused.
      content-length is set from it. ``headers`` is a mapping or (name, value) pairs, so a
      header such as set-cookie can repeat.
    * Refused here, because servers would refuse them at send time and the client would get
      nothing: control characters (but tab) or surrounding whitespace in a header value or
      ``media_type``, header names that are not tokens, content-length and transfer-encoding
      (Response owns the framing), a 1xx status (not a final response), a body with 204/304.
    * HEAD requests get the headers but no body. 204 and 304 get neither body nor
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
        ):
            _check_background(background)
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
            rest = run_ready(background)  # the common case: often done, with nothing to await
            if rest is not None:
                await rest
        elif background is not None:
            await run_background(background)
