"""Trace batches POSTed from a sender thread (``gateway.tracing.sender``), against the local receiver."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import threading
import time

import pytest

from gateway.testing.langfuse_receiver import TRACES_PATH, LangfuseReceiver
from gateway.tracing.sender import BatchSender
from support.servers import free_port


def _empty_batch() -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return gzip.compress(ExportTraceServiceRequest().SerializeToString())


def _headers(receiver: LangfuseReceiver) -> dict[str, str]:
    token = base64.b64encode(f"{receiver.public_key}:{receiver.secret_key}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}


async def test_each_outcome_is_named_and_the_thread_goes_on() -> None:
    with LangfuseReceiver() as receiver:
        sender = BatchSender("langfuse", timeout_s=0.5)
        url = receiver.url + TRACES_PATH
        try:
            assert await sender.post(url, _headers(receiver), _empty_batch()) is None
            assert await sender.post(url, {}, _empty_batch()) == "HTTP 401"  # no credentials
            receiver.set_mode("error")
            assert await sender.post(url, _headers(receiver), _empty_batch()) == "HTTP 500"
            receiver.set_mode("hang")
            started = time.monotonic()
            assert await sender.post(url, _headers(receiver), _empty_batch()) == "no answer within 0.5s"
            assert time.monotonic() - started < 2.0
            receiver.set_mode("normal")
            assert await sender.post(url, _headers(receiver), _empty_batch()) is None
            refused = f"http://127.0.0.1:{free_port()}{TRACES_PATH}"
            assert await sender.post(refused, {}, b"x") == "NewConnectionError"
            assert await sender.post("http://[not a url", {}, b"x") is not None  # named, not raised
            assert await sender.post(url, _headers(receiver), _empty_batch()) is None  # still sending
        finally:
            sender.close()
        assert receiver.trace_posts == 6  # the refused and the malformed never reached it


async def test_the_post_leaves_the_event_loop_free() -> None:
    with LangfuseReceiver() as receiver:
        receiver.set_mode("hang")
        sender = BatchSender("langfuse", timeout_s=0.6)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            await sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch())
        finally:
            ticker.cancel()
            sender.close()
        assert ticks >= 30  # the loop ran all along the 0.6 s the destination took


async def test_the_thread_is_a_background_daemon_and_a_stop_never_waits_for_a_hanging_post() -> None:
    with LangfuseReceiver() as receiver:
        receiver.set_mode("hang")
        sender = BatchSender("otlp", timeout_s=30)
        pending = asyncio.ensure_future(sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch()))
        await asyncio.sleep(0.2)
        thread = next(t for t in threading.enumerate() if t.name == "trace-sender-otlp")
        assert thread.daemon and thread.native_id is not None
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == os.getpriority(os.PRIO_PROCESS, 0)
        started = time.monotonic()
        sender.close()
        pending.cancel()  # what the exporter's bounded stop does
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert time.monotonic() - started < 0.5
