"""Trace batches POSTed from the event loop (``gateway.tracing.sender``), against the local receiver."""

from __future__ import annotations

import asyncio
import base64
import gzip
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


async def test_each_outcome_is_named_and_the_sender_goes_on() -> None:
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
            assert await sender.post(refused, {}, b"x") == "ConnectFailed"
            assert await sender.post("http://[not a url", {}, b"x") == "ValueError"  # named, not raised
            assert await sender.post(url, {"X-Bad": "a\r\nb"}, b"x") == "ValueError"  # a header that cannot be sent
            assert await sender.post(url, _headers(receiver), _empty_batch()) is None  # still sending
        finally:
            await sender.close()
        assert receiver.trace_posts == 6  # the refused and the malformed never reached it


async def test_posts_share_one_kept_connection_and_no_thread() -> None:
    threads = {thread.ident for thread in threading.enumerate()}
    with LangfuseReceiver() as receiver:
        sender = BatchSender("otlp", timeout_s=5)
        try:
            for _ in range(5):
                assert await sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch()) is None
            assert sender._client.idle == 1  # one connection, kept between batches
        finally:
            await sender.close()
        assert sender._client.idle == 0
        started = {thread.ident for thread in threading.enumerate()} - threads
        assert started <= {receiver._thread.ident if receiver._thread else None}  # only the receiver's own


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
            assert await sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch()) is not None
        finally:
            ticker.cancel()
            await sender.close()
        assert ticks >= 30  # the loop ran all along the 0.6 s the destination took


async def test_a_stop_never_waits_for_a_hanging_post() -> None:
    with LangfuseReceiver() as receiver:
        receiver.set_mode("hang")
        sender = BatchSender("otlp", timeout_s=30)
        pending = asyncio.ensure_future(sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch()))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        pending.cancel()  # what the exporter's bounded stop does
        with pytest.raises(asyncio.CancelledError):
            await pending
        await sender.close()
        assert time.monotonic() - started < 0.5
        receiver.set_mode("normal")
        # The cancelled POST's connection was dropped: the next batch goes on a new one.
        assert await sender.post(receiver.url + TRACES_PATH, _headers(receiver), _empty_batch()) is None
        await sender.close()
