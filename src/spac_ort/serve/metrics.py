"""The server's figures, rendered in the Prometheus text format at ``/metrics``.

Counters cover the server's lifetime; ``*_last`` gauges describe the last finished
request. The expert hit rate is over every request since start (the state the server
keeps warm is what it is there for).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

_PREFIX = "spac"


class Metrics:
    def __init__(self, tiers_mark: Any):
        self._lock = threading.Lock()
        self._start_mark = tiers_mark
        self.requests: dict[str, int] = {"ok": 0, "error": 0, "cancelled": 0, "rejected": 0}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.decode_seconds = 0.0
        self.proposed = 0
        self.accepted = 0
        self.queued = 0
        self.last: dict[str, float] = {}
        self.tiers: Optional[dict[str, Any]] = None

    def count(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] += 1

    def finish(self, report: Any, cancelled: bool, experts: Any) -> None:
        """Add one finished generation (its `RunReport`); ``experts`` is the generator's
        expert backend, asked for its summary since the server started."""
        with self._lock:
            self.requests["cancelled" if cancelled else "ok"] += 1
            self.prompt_tokens += report.prompt_tokens
            self.completion_tokens += report.new_tokens
            self.decode_seconds += report.decode_seconds
            self.proposed += report.proposed
            self.accepted += report.accepted
            self.last = {"tokens_per_second": report.tokens_per_second, "acceptance_rate": report.acceptance_rate}
            if report.tiers:
                self.last["hit_rate"] = report.tiers["hit_rate"]
            self.tiers = experts.summary(self.completion_tokens, since=self._start_mark)

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            _metric(lines, "requests_total", "counter", "Requests by outcome.",
                    [({"outcome": k}, v) for k, v in self.requests.items()])
            for name, value, text in (
                    ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens of finished requests."),
                    ("completion_tokens_total", self.completion_tokens, "Tokens generated."),
                    ("decode_seconds_total", self.decode_seconds, "Seconds spent decoding."),
                    ("draft_tokens_proposed_total", self.proposed, "Draft tokens proposed."),
                    ("draft_tokens_accepted_total", self.accepted, "Draft tokens accepted.")):
                _metric(lines, name, "counter", text, [({}, value)])
            _metric(lines, "queue_depth", "gauge", "Requests waiting to run.", [({}, self.queued)])
            for name, value in self.last.items():
                _metric(lines, f"{name}_last", "gauge", f"{name.replace('_', ' ').capitalize()} of the last request.",
                        [({}, value)])
            if self.tiers:
                _metric(lines, "expert_hit_rate", "gauge", "Share of routed experts found on the fast tier, "
                        "since start.", [({}, self.tiers["hit_rate"])])
                _metric(lines, "bytes_to_fast_total", "counter", "Expert bytes copied to the fast tier.",
                        [({}, self.tiers["bytes_to_fast"])])
            rate = self.completion_tokens / self.decode_seconds if self.decode_seconds else 0.0
            _metric(lines, "tokens_per_second", "gauge", "Tokens generated per decode second, since start.",
                    [({}, rate)])
        return "\n".join(lines) + "\n"


def _metric(lines: list[str], name: str, kind: str, text: str, samples: list[tuple[dict[str, str], float]]) -> None:
    full = f"{_PREFIX}_{name}"
    lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
    for labels, value in samples:
        label = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{full}{{{label}}} {value:g}" if label else f"{full} {value:g}")
