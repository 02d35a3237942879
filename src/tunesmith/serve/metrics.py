"""Prometheus text exposition of the server's counters, without a global registry (one per app)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

LATENCY_BUCKETS: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}" if pairs else ""


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.tokens: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.latency_count: Counter[str] = Counter()
        self.latency_sum: dict[str, float] = {}
        self.latency_buckets: dict[str, list[int]] = {}
        self.in_flight = 0
        self.feedback_write_failures = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(("route", route), ("status", str(status)))] += 1
            self.latency_count[route] += 1
            self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
            buckets = self.latency_buckets.setdefault(route, [0] * len(LATENCY_BUCKETS))
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    buckets[i] += 1

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        with self._lock:
            self.tokens[(("model", model), ("kind", "prompt"))] += prompt
            self.tokens[(("model", model), ("kind", "completion"))] += completion

    def feedback_write_failed(self) -> None:
        with self._lock:
            self.feedback_write_failures += 1

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP tunesmith_requests_total HTTP requests by route and status code.",
                "# TYPE tunesmith_requests_total counter",
            ]
            out += [f"tunesmith_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            out += [
                "# HELP tunesmith_request_seconds Request latency (streams: until the last event).",
                "# TYPE tunesmith_request_seconds histogram",
            ]
            for route in sorted(self.latency_count):
                for le, n in zip(LATENCY_BUCKETS, self.latency_buckets[route], strict=True):
                    out.append(
                        f"tunesmith_request_seconds_bucket{_labels((('route', route), ('le', f'{le:g}')))} {n}"
                    )
                r = (("route", route),)
                out.append(
                    f"tunesmith_request_seconds_bucket{_labels((*r, ('le', '+Inf')))} {self.latency_count[route]}"
                )
                out.append(f"tunesmith_request_seconds_sum{_labels(r)} {self.latency_sum[route]:.6f}")
                out.append(f"tunesmith_request_seconds_count{_labels(r)} {self.latency_count[route]}")
            out += [
                "# HELP tunesmith_tokens_total Prompt and completion tokens by model.",
                "# TYPE tunesmith_tokens_total counter",
            ]
            out += [f"tunesmith_tokens_total{_labels(k)} {v}" for k, v in sorted(self.tokens.items())]
            out += [
                "# HELP tunesmith_requests_in_flight Generation requests admitted and not finished.",
                "# TYPE tunesmith_requests_in_flight gauge",
                f"tunesmith_requests_in_flight {self.in_flight}",
                "# HELP tunesmith_feedback_write_failures_total Answers the feedback store could not record.",
                "# TYPE tunesmith_feedback_write_failures_total counter",
                f"tunesmith_feedback_write_failures_total {self.feedback_write_failures}",
            ]
        return "\n".join(out) + "\n"
