"""Prometheus text exposition of the server's counters, without a global registry (one per app)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.serve.batcher import BatchStats

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

    def render(self, batch: BatchStats | None = None) -> str:
        """The exposition; `batch`: the decoding batch's counters (none for a classifier)."""
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
        if batch is not None:
            out += _batch_lines(batch)
        return "\n".join(out) + "\n"


def _batch_lines(b: BatchStats) -> list[str]:
    """The running batch: rows_total / steps_total is the mean batch a decode step ran (how much
    concurrency turned into batching), prefill_rows_total / prefills_total the mean join."""
    series: list[tuple[str, str, str, float]] = [
        ("tunesmith_batch_rows", "gauge", "Sequences decoding in the running batch.", b.running),
        ("tunesmith_batch_waiting", "gauge", "Admitted requests waiting to join the batch.", b.waiting),
        ("tunesmith_decode_steps_total", "counter", "Decode forwards (one token per row).", b.steps),
        ("tunesmith_decode_rows_total", "counter", "Rows advanced by decode forwards.", b.rows_stepped),
        ("tunesmith_prefills_total", "counter", "Prefill forwards (requests joining).", b.prefills),
        ("tunesmith_prefill_rows_total", "counter", "Prompts prefilled.", b.prefill_rows),
        ("tunesmith_prefill_tokens_total", "counter", "Prompt tokens prefilled.", b.prefill_tokens),
        (
            "tunesmith_prefix_cached_tokens_total",
            "counter",
            "Prompt tokens a cached shared prefix spared from prefilling.",
            b.prefix_tokens,
        ),
        (
            "tunesmith_prefill_seconds_total",
            "counter",
            "Time in prefill forwards.",
            round(b.prefill_seconds, 6),
        ),
        ("tunesmith_decode_seconds_total", "counter", "Time in decode forwards.", round(b.decode_seconds, 6)),
    ]
    out = []
    for name, kind, text, value in series:
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return out
