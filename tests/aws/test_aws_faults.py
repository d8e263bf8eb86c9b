"""Throttling and dead endpoints, through a small HTTP proxy in front of the moto server."""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import FIRST_DAY, MANAGEMENT_ACCOUNT, AwsWorld, free_port

from cloudopt_pipelines.sources.aws import CollectorError
from cloudopt_pipelines.testing.aws_api import AwsApi, forward, send, serve

EC2_THROTTLE = (
    503,
    "text/xml",
    "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    "</Error></Errors><RequestID>throttle-proxy</RequestID></Response>",
)
QUERY_THROTTLE = (
    400,
    "text/xml",
    "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    "<RequestId>throttle-proxy</RequestId></ErrorResponse>",
)
JSON_THROTTLE = (400, "application/x-amz-json-1.1", '{"__type":"ThrottlingException","message":"Rate exceeded"}')


class FaultProxy:
    """Forwards to moto; throttles the first ``throttle`` requests of each protocol, or drops every
    request after the first ``drop_after``."""

    def __init__(self, upstream: str, throttle: int = 0, drop_after: int | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.remaining = {"ec2": throttle, "query": throttle, "json": throttle}
        self.drop_after = drop_after
        self.seen = 0
        self.throttled: list[str] = []
        self.lock = threading.Lock()

    def decide(self, headers: dict[str, str], body: bytes) -> tuple[int, str, str] | str | None:
        with self.lock:
            self.seen += 1
            if self.drop_after is not None and self.seen > self.drop_after:
                return "drop"
            if "x-amz-target" in headers:
                kind, reply = "json", JSON_THROTTLE
            elif body.startswith(b"Action=") or b"&Action=" in body:
                kind, reply = ("ec2", EC2_THROTTLE) if b"Version=2016-11-15" in body else ("query", QUERY_THROTTLE)
            else:
                return None
            if self.remaining[kind] > 0:
                self.remaining[kind] -= 1
                self.throttled.append(kind)
                return reply
            return None

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        decision = self.decide({k.lower(): v for k, v in handler.headers.items()}, body)
        if decision == "drop":
            handler.close_connection = True
            handler.connection.close()
            return
        if decision is not None:
            status, content_type, text = decision
            headers = [("Content-Type", content_type)]
            if content_type.startswith("application/x-amz-json"):
                headers.append(("x-amzn-errortype", "ThrottlingException"))
            send(handler, status, text.encode(), headers)
            return
        forward(handler, self.upstream, body)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """The proxy's URL, in front of ``AwsApi`` (moto answers EMR's policy reads with HTTP 500, retried:
        the proxy answers as AWS does for a cluster without one)."""
        with AwsApi(self.upstream.geturl()).serve() as api, serve(self.handle) as url:
            self.upstream = urllib.parse.urlsplit(api)
            yield url


def test_throttled_calls_back_off_and_complete(make_collector, world: AwsWorld, inventory) -> None:
    proxy = FaultProxy(world.endpoint, throttle=1)
    with proxy.serve() as url:
        collected = make_collector(endpoint_url=url, max_attempts=5).collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)
    assert sorted(proxy.throttled) == ["ec2", "json", "query"]
    assert collected.metadata["http_retries"] == 3
    assert sorted(collected.table.column("resource_id").to_pylist()) == sorted(
        inventory.table.column("resource_id").to_pylist()
    )


def test_dead_endpoint_names_endpoint_account_region_call_and_fix(make_collector, world: AwsWorld) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    collector = make_collector(endpoint_url=dead, max_attempts=2, connect_timeout_seconds=1)
    with pytest.raises(CollectorError) as error:
        collector.collect_inventory(world.member_account, FIRST_DAY)
    message = str(error.value)
    assert dead in message
    assert world.member_account in message
    assert "us-east-1" in message
    assert "sts:GetCallerIdentity" in message
    assert "Fix:" in message and "endpoint" in message


def test_server_lost_mid_run_names_the_failed_call(make_collector, world: AwsWorld) -> None:
    proxy = FaultProxy(world.endpoint, drop_after=4)
    with proxy.serve() as url:
        collector = make_collector(endpoint_url=url, max_attempts=2)
        with pytest.raises(CollectorError) as error:
            collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)
    message = str(error.value)
    assert url in message and MANAGEMENT_ACCOUNT in message and "us-east-1" in message
    # The fifth request: GetCallerIdentity, then the Auto Scaling and ECS listing calls before it.
    assert "AWS call ecs:" in message or "AWS call autoscaling:" in message or "AWS call ec2:" in message
