"""A small client of the Prometheus HTTP API (``/api/v1/query``, ``/api/v1/query_range``, ``/api/v1/series``).

Only the plain HTTP API, so Thanos, Mimir, VictoriaMetrics and Amazon Managed Prometheus (behind a
SigV4 proxy) work too. Every call is counted, with the series and bytes it returned, so that the asset
metadata shows the load a run put on Prometheus. No Dagster here.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class PrometheusError(RuntimeError):
    """A Prometheus call failed; the message names the endpoint, the query and the fix."""


@dataclass
class QueryStats:
    """What the calls of one collection cost Prometheus."""

    queries: int = 0
    series_returned: int = 0
    samples_returned: int = 0
    largest_response_series: int = 0
    largest_response_bytes: int = 0
    longest_range_seconds: float = 0.0
    #: label sets listed by ``/api/v1/series`` (index only, no samples): how batches are planned
    series_listed: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "prometheus_queries": self.queries,
            "prometheus_series_returned": self.series_returned,
            "prometheus_samples_returned": self.samples_returned,
            "prometheus_largest_response_series": self.largest_response_series,
            "prometheus_largest_response_bytes": self.largest_response_bytes,
            "prometheus_longest_range_seconds": self.longest_range_seconds,
            "prometheus_series_listed": self.series_listed,
            "prometheus_queries_by_endpoint": dict(sorted(self.by_endpoint.items())),
        }


@dataclass
class PrometheusClient:
    """Queries one Prometheus-compatible endpoint."""

    url: str
    timeout_s: float = 60.0
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    ca_file: str | None = None
    tls_verify: bool = True
    stats: QueryStats = field(default_factory=QueryStats)

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _call(self, endpoint: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{endpoint}"
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self.bearer_token:
            request.add_header("Authorization", f"Bearer {self.bearer_token}")
        elif self.basic_auth:
            token = base64.b64encode(f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        self.stats.queries += 1
        self.stats.by_endpoint[endpoint] = self.stats.by_endpoint.get(endpoint, 0) + 1
        query = params.get("query") or params.get("match[]", "")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context()) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            fix = (
                "check the credentials named in the clusters file"
                if exc.code in (401, 403)
                else "check the query's metric and label names and the Prometheus logs"
                if exc.code in (400, 422)
                else "check the Prometheus server's health and logs, then run the partition again"
            )
            raise PrometheusError(
                f"{endpoint} at {self.url} returned HTTP {exc.code}: {detail} (query: {query}). Fix: {fix}"
            ) from exc
        except TimeoutError as exc:
            raise PrometheusError(
                f"{endpoint} at {self.url} did not answer within {self.timeout_s:g}s (query: {query}). "
                "Fix: raise prometheus_timeout in the clusters file, "
                "or lower max_series / max_range so each query asks less"
            ) from exc
        except urllib.error.URLError as exc:
            raise PrometheusError(
                f"cannot reach Prometheus at {self.url} ({exc.reason}). "
                "Fix: check prometheus_url in the clusters file and that the server is up and reachable from here"
            ) from exc
        except (http.client.HTTPException, OSError) as exc:
            # Reached, then gone mid-answer (a restart, a crash, a proxy cutting the connection).
            raise PrometheusError(
                f"Prometheus at {self.url} dropped the connection during {endpoint} "
                f"({type(exc).__name__}: {exc}) (query: {query}). "
                "Fix: check the Prometheus server's health and logs (did it restart?), then run the partition again"
            ) from exc
        self.stats.largest_response_bytes = max(self.stats.largest_response_bytes, len(raw))
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise PrometheusError(
                f"{endpoint} at {self.url} did not return JSON; is prometheus_url the API's base URL?"
            ) from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"{endpoint} at {self.url} failed: {payload.get('error')} (query: {query})")
        return payload["data"]

    def _count(self, result: list[dict[str, Any]], key: str) -> None:
        self.stats.series_returned += len(result)
        self.stats.largest_response_series = max(self.stats.largest_response_series, len(result))
        self.stats.samples_returned += sum(len(r.get(key, ())) if key == "values" else 1 for r in result)

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        """An instant query at ``at`` (epoch seconds): ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self._call("query", {"query": promql, "time": f"{at:.3f}"})
        result = data.get("result", [])
        self._count(result, "value")
        return result

    def query_range(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        """A range query from ``start`` to ``end`` (inclusive, epoch seconds) every ``step_s``."""
        data = self._call(
            "query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step_s)}
        )
        result = data.get("result", [])
        self._count(result, "values")
        return result

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        """The label sets of the series ``match`` selects between ``start`` and ``end`` (``/api/v1/series``):
        read from the index, no samples, so counting series this way is cheap for Prometheus."""
        data = self._call("series", {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        result = list(data or [])
        self.stats.series_listed += len(result)
        return result

    def buildinfo(self) -> dict[str, Any]:
        """The server's version (``/api/v1/status/buildinfo``): a cheap reachability check."""
        url = f"{self.url}/api/v1/status/buildinfo"
        request = urllib.request.Request(url)
        if self.bearer_token:
            request.add_header("Authorization", f"Bearer {self.bearer_token}")
        self.stats.queries += 1
        self.stats.by_endpoint["status/buildinfo"] = self.stats.by_endpoint.get("status/buildinfo", 0) + 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context()) as response:
                return json.loads(response.read()).get("data", {})
        except (OSError, ValueError) as exc:
            raise PrometheusError(
                f"cannot reach Prometheus at {self.url} ({exc}). Fix: check prometheus_url in the clusters file "
                "and that the server is up and reachable from here"
            ) from exc
