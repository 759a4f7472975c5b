"""BackgroundTask and BackgroundTasks: dispatch, order, failures, threads, context, concurrency."""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest

import bgtasks
from bgtasks import BackgroundTask, BackgroundTasks
from bgtasks._engine import SyncBatch

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def append_async(log: list[Any], item: Any) -> None:
    await anyio.sleep(0)
    log.append(item)


def append_sync(log: list[Any], item: Any) -> None:
    log.append(item)


def record_thread(log: list[int]) -> None:
    log.append(threading.get_ident())


async def record_thread_async(log: list[int]) -> None:
    log.append(threading.get_ident())


class AsyncCallable:
    def __init__(self) -> None:
        self.threads: list[int] = []

    async def __call__(self) -> None:
        self.threads.append(threading.get_ident())


class SyncCallable:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())


def fail(message: str) -> None:
    raise ValueError(message)


async def fail_async(message: str) -> None:
    await anyio.sleep(0)
    raise KeyError(message)


# 1. Dispatch


async def test_coroutine_function_runs_on_the_loop(loop_thread: int) -> None:
    threads: list[int] = []
    await BackgroundTask(record_thread_async, threads)()
    assert threads == [loop_thread]


async def test_nested_partial_of_coroutine_function_runs_on_the_loop(loop_thread: int) -> None:
    threads: list[int] = []
    task = BackgroundTask(functools.partial(functools.partial(record_thread_async), threads))
    assert task.is_async
    await task()
    assert threads == [loop_thread]


async def test_object_with_async_call_runs_on_the_loop(loop_thread: int) -> None:
    func = AsyncCallable()
    await BackgroundTask(func)()
    assert func.threads == [loop_thread]


async def test_sync_function_runs_in_a_worker_thread(loop_thread: int) -> None:
    threads: list[int] = []
    await BackgroundTask(record_thread, threads)()
    assert len(threads) == 1
    assert threads[0] != loop_thread


async def test_sync_callable_object_and_class_run_in_a_worker_thread(loop_thread: int) -> None:
    func = SyncCallable()
    tasks = BackgroundTasks()
    tasks.add_task(func)
    tasks.add_task(functools.partial(func))
    await tasks()
    assert len(func.threads) == 2
    assert loop_thread not in func.threads


async def test_awaitable_returned_by_a_sync_callable_is_awaited(loop_thread: int) -> None:
    threads: list[int] = []
    await BackgroundTask(lambda: record_thread_async(threads))()
    assert threads == [loop_thread]


async def test_awaitable_returned_by_a_sync_callable_is_awaited_in_order() -> None:
    log: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(append_sync, log, "a")
    tasks.add_task(lambda: append_async(log, "b"))
    tasks.add_task(append_sync, log, "c")
    await tasks()
    assert log == ["a", "b", "c"]


@pytest.mark.parametrize("value", [None, 42, "send_email"])
def test_non_callable_is_rejected_by_add_task(value: Any) -> None:
    tasks = BackgroundTasks()
    with pytest.raises(TypeError, match="needs a callable"):
        tasks.add_task(value)
    assert len(tasks) == 0


def test_non_callable_is_rejected_by_the_constructor() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        BackgroundTask(42)  # type: ignore[arg-type]


def test_coroutine_object_is_rejected_with_the_fix() -> None:
    coroutine = append_async([], 1)
    with pytest.raises(TypeError, match=r"add_task\(send_email, to\)"):
        BackgroundTasks().add_task(coroutine)  # type: ignore[arg-type]


def test_tasks_argument_must_hold_background_tasks() -> None:
    with pytest.raises(TypeError, match="wrap it as BackgroundTask"):
        BackgroundTasks([print])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), (1.0, TypeError)],
)
def test_concurrency_must_be_a_positive_int(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="concurrency"):
        BackgroundTasks(concurrency=value)


def test_task_exposes_func_args_kwargs_and_name() -> None:
    task = BackgroundTasks().add_task(append_sync, [], item=3)
    assert task.func is append_sync
    assert task.args == ([],)
    assert task.kwargs == {"item": 3}
    assert task.name == "test_tasks.append_sync"
    assert BackgroundTask(functools.partial(fail_async)).name == "test_tasks.fail_async"
    assert BackgroundTask(AsyncCallable()).name == "test_tasks.AsyncCallable"


def test_len_and_iteration_follow_add_order() -> None:
    tasks = BackgroundTasks([BackgroundTask(print)])
    second = tasks.add_task(fail, "x")
    assert len(tasks) == 2
    assert [task.func for task in tasks] == [print, fail]
    assert list(tasks)[1] is second


def test_tasks_lists_the_added_tasks_and_is_not_a_way_to_add() -> None:
    tasks = BackgroundTasks()
    assert tasks.tasks == ()
    first = tasks.add_task(append_sync, [], 1)
    listed = tasks.tasks
    assert listed == (first,)
    with pytest.raises(AttributeError):
        listed.append(BackgroundTask(print))  # type: ignore[attr-defined]
    assert len(tasks) == 1


def test_empty_list_is_truthy_and_len_still_counts() -> None:
    tasks = BackgroundTasks()
    assert tasks
    assert len(tasks) == 0


async def test_func_by_keyword_is_the_task_only_when_no_function_comes_first() -> None:
    seen: list[Any] = []

    def apply(func: Any, value: int) -> None:
        seen.append(func(value))

    tasks = BackgroundTasks()
    tasks.add_task(apply, func=str, value=2)  # func= is the task's own argument here
    tasks.add_task(func=append_sync, log=seen, item="by keyword")
    await tasks()
    await BackgroundTask(func=append_sync, log=seen, item="single")()
    assert seen == ["2", "by keyword", "single"]


@pytest.mark.parametrize("make", [lambda: BackgroundTasks().add_task(), lambda: BackgroundTask()])
def test_no_function_at_all_raises_with_the_fix(make: Any) -> None:
    with pytest.raises(TypeError, match=r"needs the function to run: \w+\(func, \*args"):
        make()


def test_none_for_tasks_is_an_empty_list_as_in_starlette() -> None:
    assert len(BackgroundTasks(None)) == 0
    assert len(BackgroundTasks(tasks=None, concurrency=2)) == 0


# 2. Order


async def test_tasks_run_in_the_order_they_were_added() -> None:
    log: list[int] = []
    tasks = BackgroundTasks()
    for item in range(6):
        tasks.add_task(append_async if item % 3 else append_sync, log, item)
    await tasks()
    assert log == list(range(6))


async def test_task_added_by_a_running_task_runs_after_the_others() -> None:
    log: list[str] = []
    tasks = BackgroundTasks()

    async def adder() -> None:
        log.append("adder")
        tasks.add_task(append_sync, log, "added by async")

    def sync_adder() -> None:
        log.append("sync adder")
        tasks.add_task(append_async, log, "added by sync")

    tasks.add_task(adder)
    tasks.add_task(sync_adder)
    tasks.add_task(append_sync, log, "last added first")
    await tasks()
    assert log == ["adder", "sync adder", "last added first", "added by async", "added by sync"]


# 3. Failure isolation


async def test_failing_task_does_not_stop_the_next() -> None:
    log: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(fail, "first")
    tasks.add_task(append_sync, log, "after sync failure")
    tasks.add_task(fail_async, "second")
    tasks.add_task(append_async, log, "after async failure")
    with pytest.raises(ExceptionGroup):
        await tasks()
    assert log == ["after sync failure", "after async failure"]


async def test_one_failure_raises_the_tasks_own_exception_after_all_ran() -> None:
    log: list[str] = []
    error = ValueError("mine")

    def raise_error() -> None:
        raise error

    tasks = BackgroundTasks()
    tasks.add_task(raise_error)
    tasks.add_task(append_async, log, "ran")
    with pytest.raises(ValueError) as caught:
        await tasks()
    assert caught.value is error
    assert log == ["ran"]


async def test_several_failures_raise_one_flat_group_in_task_order() -> None:
    tasks = BackgroundTasks()
    tasks.add_task(fail, "one")
    tasks.add_task(fail_async, "two")
    tasks.add_task(fail, "three")
    with pytest.raises(ExceptionGroup) as caught:
        await tasks()
    assert [type(e) for e in caught.value.exceptions] == [ValueError, KeyError, ValueError]
    assert [e.args[0] for e in caught.value.exceptions] == ["one", "two", "three"]


# 4. Threads


async def test_background_threads_do_not_use_anyios_default_limiter() -> None:
    default = anyio.to_thread.current_default_thread_limiter()
    saved = default.total_tokens
    default.total_tokens = 1
    release = threading.Event()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                # A sync endpoint holds the only default token until background work has run.
                group.start_soon(anyio.to_thread.run_sync, release.wait)
                await anyio.sleep(0.01)
                await BackgroundTask(release.set)()
    finally:
        release.set()
        default.total_tokens = saved
    assert release.is_set()


async def test_exhausted_background_budget_does_not_block_endpoints() -> None:
    limiter = bgtasks.current_thread_limiter()
    saved = limiter.total_tokens
    limiter.total_tokens = 1
    release = threading.Event()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(BackgroundTask(release.wait))
                await anyio.sleep(0.01)
                assert limiter.borrowed_tokens == 1
                await anyio.to_thread.run_sync(release.set)
    finally:
        release.set()
        limiter.total_tokens = saved


async def test_thread_budget_is_per_event_loop_and_has_the_documented_default() -> None:
    limiter = bgtasks.current_thread_limiter()
    assert limiter is bgtasks.current_thread_limiter()
    assert limiter is not anyio.to_thread.current_default_thread_limiter()
    assert limiter.total_tokens == bgtasks._engine.DEFAULT_THREAD_LIMIT == 40


async def test_consecutive_sync_tasks_share_one_thread_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    hops: list[int] = []  # the tasks of each batch handed to a worker thread in one go
    real_run = SyncBatch.run

    def counting_run(batch: SyncBatch) -> None:
        hops.append(len(batch.calls))
        real_run(batch)

    monkeypatch.setattr(SyncBatch, "run", counting_run)
    threads: list[int] = []
    tasks = BackgroundTasks()
    for _ in range(5):
        tasks.add_task(record_thread, threads)
    tasks.add_task(record_thread_async, threads)
    for _ in range(3):
        tasks.add_task(record_thread, threads)
    await tasks()
    assert len(threads) == 9
    assert hops == [5, 3]
    assert len(set(threads[:5])) == 1


def test_one_process_can_run_asyncio_then_trio() -> None:
    async def main() -> tuple[int, int]:
        threads: list[int] = []
        tasks = BackgroundTasks()
        tasks.add_task(record_thread, threads)
        tasks.add_task(lambda: record_thread_async(threads))
        await tasks()
        return len(threads), bgtasks.current_thread_limiter().total_tokens

    assert anyio.run(main, backend="asyncio") == (2, 40)
    assert anyio.run(main, backend="trio") == (2, 40)
    assert anyio.run(main, backend="asyncio") == (2, 40)


async def test_slow_sync_task_does_not_block_other_requests_sync_tasks() -> None:
    # One request's task blocks until another request's task has run. With a single worker
    # and no stall handling this would never finish.
    release = threading.Event()
    blocked = BackgroundTasks()
    blocked.add_task(release.wait, 10)
    freeing = BackgroundTasks()
    freeing.add_task(release.set)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(blocked)
            await anyio.sleep(0.01)
            group.start_soon(freeing)
    assert release.is_set()


async def test_many_requests_stay_within_the_thread_budget() -> None:
    threads: list[int] = []
    requests = [BackgroundTasks() for _ in range(200)]
    for tasks in requests:
        tasks.add_task(record_thread, threads)
    async with anyio.create_task_group() as group:
        for tasks in requests:
            group.start_soon(tasks)
    assert len(threads) == 200
    assert len(set(threads)) <= bgtasks.current_thread_limiter().total_tokens


def test_no_worker_is_left_running_after_the_loop_ends() -> None:
    def in_worker_loop(ident: int) -> bool:
        frame = sys._current_frames().get(ident)
        while frame is not None:
            if frame.f_code.co_name == "_work" and frame.f_code.co_filename.endswith("_engine.py"):
                return True
            frame = frame.f_back
        return False

    async def main() -> int:
        threads: list[int] = []
        tasks = BackgroundTasks()
        tasks.add_task(record_thread, threads)
        await tasks()
        await anyio.sleep(0.01)
        assert in_worker_loop(threads[0])  # the worker lingers for more work while the loop runs
        return threads[0]

    for backend in ("asyncio", "trio"):
        worker = anyio.run(main, backend=backend)
        assert not in_worker_loop(worker), backend


# 5. Context


async def test_task_sees_context_as_it_was_when_added() -> None:
    seen: list[str] = []

    async def see_async() -> None:
        seen.append(request_id.get())

    def see_sync() -> None:
        seen.append(request_id.get())

    tasks = BackgroundTasks()
    token = request_id.set("at add time")
    tasks.add_task(see_async)
    tasks.add_task(see_sync)
    request_id.set("changed later")
    try:
        await tasks()
    finally:
        request_id.reset(token)
    assert seen == ["at add time", "at add time"]


async def test_task_added_from_a_sync_endpoint_in_a_worker_thread_sees_its_context() -> None:
    seen: list[str] = []
    tasks = BackgroundTasks()

    def sync_endpoint() -> None:
        request_id.set("set in the endpoint thread")
        tasks.add_task(lambda: seen.append(request_id.get()))
        tasks.add_task(functools.partial(append_async, seen, "marker"))
        tasks.add_task(lambda: append_async(seen, request_id.get()))

    await anyio.to_thread.run_sync(sync_endpoint)
    assert request_id.get() == "unset"
    await tasks()
    assert seen == ["set in the endpoint thread", "marker", "set in the endpoint thread"]


async def test_context_changes_in_a_task_stay_in_that_task() -> None:
    seen: list[str] = []

    async def change() -> None:
        request_id.set("changed by task")

    async def see() -> None:
        seen.append(request_id.get())

    tasks = BackgroundTasks()
    tasks.add_task(change)
    tasks.add_task(see)
    await tasks()
    assert seen == ["unset"]
    assert request_id.get() == "unset"


async def test_async_tasks_run_in_the_callers_task_not_a_new_one() -> None:
    caller = anyio.get_current_task().id
    seen: list[int] = []

    async def record_task() -> None:
        await anyio.sleep(0)
        seen.append(anyio.get_current_task().id)

    tasks = BackgroundTasks()
    tasks.add_task(record_task)
    tasks.add_task(functools.partial(record_task))
    await tasks()
    assert seen == [caller, caller]


async def test_cancel_scope_inside_a_task_works_in_its_context() -> None:
    seen: list[str] = []

    async def bounded() -> None:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(30)
        seen.append(f"{scope.cancelled_caught} {request_id.get()}")

    token = request_id.set("ctx")
    task = BackgroundTask(bounded)
    request_id.reset(token)
    await task()
    assert seen == ["True ctx"]


# 6. Concurrency


async def test_concurrency_runs_tasks_at_the_same_time() -> None:
    # With concurrency=1 the first task would wait forever for the second.
    second_started = anyio.Event()
    log: list[str] = []

    async def first() -> None:
        await second_started.wait()
        log.append("first")

    async def second() -> None:
        second_started.set()
        log.append("second")

    tasks = BackgroundTasks(concurrency=2)
    tasks.add_task(first)
    tasks.add_task(second)
    with anyio.fail_after(10):
        await tasks()
    assert log == ["second", "first"]


async def test_concurrency_limit_is_respected_and_tasks_start_in_order() -> None:
    running = 0
    peak = 0
    started: list[int] = []

    async def work(item: int) -> None:
        nonlocal running, peak
        started.append(item)
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await anyio.sleep(0)
        running -= 1

    tasks = BackgroundTasks(concurrency=3)
    for item in range(10):
        tasks.add_task(work, item)
    await tasks()
    assert started == list(range(10))
    assert peak == 3


async def test_concurrent_failure_does_not_cancel_siblings() -> None:
    may_finish = anyio.Event()
    log: list[str] = []

    async def fails_first() -> None:
        raise RuntimeError("early")

    async def slow_sibling() -> None:
        await may_finish.wait()
        log.append("sibling finished")

    async def releaser() -> None:
        await anyio.sleep(0.01)
        may_finish.set()

    tasks = BackgroundTasks(concurrency=3)
    tasks.add_task(slow_sibling)
    tasks.add_task(fails_first)
    tasks.add_task(releaser)
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="early"):
        await tasks()
    assert log == ["sibling finished"]


async def test_concurrent_sync_tasks_run_in_their_own_threads() -> None:
    both = threading.Barrier(2, timeout=10)
    tasks = BackgroundTasks(concurrency=2)
    tasks.add_task(both.wait)
    tasks.add_task(both.wait)
    await tasks()
    assert both.n_waiting == 0


# Cancellation


async def test_cancellation_propagates_and_names_unfinished_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def hangs() -> None:
        await anyio.sleep(60)

    tasks = BackgroundTasks()
    tasks.add_task(append_async, log, "done")
    tasks.add_task(hangs)
    tasks.add_task(append_sync, log, "never")
    with anyio.move_on_after(0.05) as scope:
        await tasks()
    assert scope.cancelled_caught
    assert log == ["done"]
    warnings = [r for r in caplog.records if r.name == "bgtasks" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert (
        "cancelled: [test_tasks.test_cancellation_propagates_and_names_unfinished_tasks"
        ".<locals>.hangs]" in message
    )
    assert "never started: [test_tasks.append_sync]" in message
    assert "append_async" not in message


async def test_cancelled_sync_batch_starts_no_further_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    log: list[str] = []

    def blocks() -> None:
        started.set()
        release.wait(10)
        finished.set()

    tasks = BackgroundTasks()
    tasks.add_task(blocks)
    tasks.add_task(append_sync, log, "never")
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(tasks)
                await anyio.to_thread.run_sync(started.wait)
                scope.cancel()
    finally:
        release.set()
    await anyio.to_thread.run_sync(finished.wait, 10)
    await anyio.sleep(0.05)  # room for a wrongly started next task to show up
    assert log == []
    message = next(r.getMessage() for r in caplog.records if r.name == "bgtasks")
    assert (
        "cancelled: [test_tasks.test_cancelled_sync_batch_starts_no_further_task.<locals>.blocks]"
        in message
    )
    assert "never started: [test_tasks.append_sync]" in message


async def test_sync_task_raising_system_exit_is_a_failure_not_a_dead_worker() -> None:
    log: list[str] = []

    def exits() -> None:
        raise SystemExit(3)

    tasks = BackgroundTasks()
    tasks.add_task(exits)
    tasks.add_task(append_sync, log, "next")
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="SystemExit") as caught:
        await tasks()
    assert isinstance(caught.value.__cause__, SystemExit)
    assert log == ["next"]
    again = BackgroundTasks()
    again.add_task(append_sync, log, "worker still serves")
    with anyio.fail_after(10):
        await again()
    assert log == ["next", "worker still serves"]


async def test_cancelled_while_a_batch_is_queued_names_no_finished_task_as_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hold = threading.Event()
    blocker = BackgroundTasks()
    blocker.add_task(hold.wait, 10)  # occupies the only worker
    limiter = bgtasks.current_thread_limiter()
    saved = limiter.total_tokens
    limiter.total_tokens = 1
    log: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(append_async, log, "done first")
    tasks.add_task(append_sync, log, "queued")
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(blocker)
            await anyio.sleep(0.01)
            with anyio.move_on_after(0.05):
                await tasks()
            hold.set()
    finally:
        hold.set()
        limiter.total_tokens = saved
    assert log == ["done first"]
    [message] = [r.getMessage() for r in caplog.records if "did not finish" in r.getMessage()]
    assert "cancelled: []" in message
    assert "never started: [test_tasks.append_sync]" in message


# Nothing escapes: whatever a task's own code raises is that task's failure


class Custom(BaseException):
    pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a bare future is asyncio's own
async def test_task_awaiting_its_own_cancelled_future_fails_and_the_next_runs() -> None:
    import asyncio

    log: list[str] = []

    async def awaits_cancelled_future() -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    tasks = BackgroundTasks()
    tasks.add_task(awaits_cancelled_future)
    tasks.add_task(append_async, log, "next")
    with pytest.raises(RuntimeError, match="CancelledError") as caught:
        await tasks()
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    assert log == ["next"]


@pytest.mark.parametrize("raised", [GeneratorExit(), Custom()])
async def test_base_exception_of_an_async_task_fails_it_and_the_next_runs(
    raised: BaseException,
) -> None:
    log: list[str] = []

    async def raises() -> None:
        raise raised

    tasks = BackgroundTasks()
    tasks.add_task(raises)
    tasks.add_task(append_async, log, "next")
    with pytest.raises(RuntimeError, match=type(raised).__name__) as caught:
        await tasks()
    assert caught.value.__cause__ is raised
    assert log == ["next"]


async def test_sync_task_returning_an_object_whose_await_raises_is_a_failure() -> None:
    class BadAwaitable:
        def __await__(self) -> Any:
            raise RuntimeError("no awaiting me")

    log: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(BadAwaitable)
    tasks.add_task(append_async, log, "next")
    with pytest.raises(RuntimeError, match="no awaiting me"):
        await tasks()
    assert log == ["next"]


async def test_keyboard_interrupt_in_an_async_task_propagates() -> None:
    async def interrupts() -> None:
        raise KeyboardInterrupt

    tasks = BackgroundTasks()
    tasks.add_task(interrupts)
    with pytest.raises(KeyboardInterrupt):
        await tasks()


# Nothing vanishes


async def test_add_task_after_the_run_has_ended_raises() -> None:
    log: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(append_async, log, "ran")
    await tasks()
    with pytest.raises(RuntimeError, match=r"already run.*new BackgroundTasks"):
        tasks.add_task(append_async, log, "audit")
    assert log == ["ran"]


def sync_generator() -> Any:
    yield 1


async def async_generator() -> Any:
    yield 1


@pytest.mark.parametrize("func", [sync_generator, async_generator])
def test_generator_functions_are_refused_by_add_task(func: Any) -> None:
    with pytest.raises(TypeError, match="generator function"):
        BackgroundTasks().add_task(func)


@pytest.mark.parametrize("value", [0, False, 3])
def test_tasks_argument_that_is_not_an_iterable_is_rejected(value: Any) -> None:
    with pytest.raises(TypeError, match="concurrency=4"):
        BackgroundTasks(value)


async def test_method_bound_to_a_builtin_is_a_sync_task() -> None:
    import types

    log: list[Any] = []
    tasks = BackgroundTasks()
    tasks.add_task(types.MethodType(list.append, log), "bound")  # type: ignore[arg-type]
    await tasks()
    assert log == ["bound"]


# Runs that can be repeated safely


async def test_one_task_can_run_concurrently_each_run_in_its_own_context() -> None:
    seen: list[str] = []
    steps = anyio.Event()

    async def sets_and_reads(tag_var: contextvars.ContextVar[str]) -> None:
        before = tag_var.get()
        tag_var.set(f"changed by run {len(seen)}")
        seen.append(before)
        await steps.wait()

    task = BackgroundTask(sets_and_reads, request_id)
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(task)
        await anyio.wait_all_tasks_blocked()
        steps.set()
    assert seen == ["unset", "unset", "unset"]  # no run saw another's change


async def test_background_tasks_run_each_task_at_most_once() -> None:
    log: list[str] = []
    release = anyio.Event()

    async def waits() -> None:
        await release.wait()
        log.append("waited")

    tasks = BackgroundTasks()
    tasks.add_task(waits)
    tasks.add_task(append_async, log, "second")
    async with anyio.create_task_group() as group:
        group.start_soon(tasks)
        group.start_soon(tasks)  # concurrently: takes only what the first has not started
        await anyio.wait_all_tasks_blocked()
        release.set()
    await tasks()  # once more, after both: nothing left to run
    assert sorted(log) == ["second", "waited"]


async def test_concurrency_includes_tasks_added_while_running() -> None:
    arrived = 0
    everyone = anyio.Event()
    tasks = BackgroundTasks(concurrency=3)

    async def meet() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            everyone.set()
        await everyone.wait()  # a 3-way barrier: deadlocks if they run one at a time

    async def adds_three() -> None:
        for _ in range(3):
            tasks.add_task(meet)

    tasks.add_task(adds_three)
    with anyio.fail_after(10):
        await tasks()
    assert arrived == 3


async def test_chain_of_tasks_that_never_suspend_can_be_cancelled() -> None:
    ran = 0
    tasks = BackgroundTasks()

    async def again() -> None:
        nonlocal ran
        ran += 1
        if ran < 200_000:  # bounded, so that a regression fails instead of hanging
            tasks.add_task(again)

    tasks.add_task(again)
    with anyio.move_on_after(0.05) as scope:
        await tasks()
    assert scope.cancelled_caught
    assert ran < 200_000


@pytest.mark.parametrize("which", ["run", "run_sync"])
async def test_anyio_from_thread_works_inside_a_sync_task(which: str) -> None:
    import anyio.from_thread

    log: list[str] = []

    async def on_the_loop() -> None:
        log.append("async on the loop")

    def call_back() -> None:
        if which == "run":
            anyio.from_thread.run(on_the_loop)
        else:
            anyio.from_thread.run_sync(log.append, "sync on the loop")

    tasks = BackgroundTasks()
    tasks.add_task(call_back)
    with anyio.fail_after(10):
        await tasks()
    assert log == (["async on the loop"] if which == "run" else ["sync on the loop"])
