"""Envoy's gRPC access log service (envoy.service.accesslog.v3), as the breaker and usage processes receive it:
each HTTP entry of each message goes to one callback, with the time the message arrived."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

log = logging.getLogger(__name__)


class AccessLogSink(als_pb2_grpc.AccessLogServiceServicer):
    """Never log an entry: Envoy puts all of a request's dynamic metadata in it, a pool's tries' credentials too."""

    def __init__(self, record: Callable[[Any, float], None], what: str) -> None:
        self._record = record
        self._what = what  # for the log line of an entry that could not be counted

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                               context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            now = time.time()
            for entry in message.http_logs.log_entry:
                try:
                    self._record(entry, now)
                except Exception:  # one odd entry must not drop the batch
                    log.exception("%s could not be counted", self._what)
        return als_pb2.StreamAccessLogsResponse()


def add_access_log_sink(server: grpc.aio.Server, record: Callable[[Any, float], None], what: str) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogSink(record, what), server)
