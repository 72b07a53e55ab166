"""Counters for one generation and the `RunReport` rendered at its end.

Timers accumulate per piece kind; the hot loop only adds floats (no logging per token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union


class PieceTimers:
    """Seconds and ORT calls per piece kind (embed, attention, router, experts, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, kind: str, seconds: float, calls: int = 1) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.calls[kind] = self.calls.get(kind, 0) + calls

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


@dataclass
class RunReport:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    piece_seconds: dict[str, float] = field(default_factory=dict)              # prefill and decoding
    prefill_piece_seconds: dict[str, float] = field(default_factory=dict)      # ... of which prefill
    piece_calls: dict[str, int] = field(default_factory=dict)
    speculative: bool = False
    draft_tokens: int = 0          # K, or the largest K auto may pick
    draft_mode: Union[int, str] = 0                 # "auto" or the fixed K (0: plain decoding)
    k_histogram: dict[int, int] = field(default_factory=dict)   # K -> target passes run with it (0 = plain)
    proposed: int = 0              # draft tokens proposed
    accepted: int = 0              # draft tokens accepted
    verify_steps: int = 0          # target passes that verified a window
    lookup_windows: int = 0        # ... of them with drafts from the context
    lookup_proposed: int = 0       # draft tokens from the context, proposed and accepted
    lookup_accepted: int = 0
    target_steps: int = 0          # target passes after prefill (verify + plain)
    step_tokens: int = 0           # tokens committed by those passes
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    tiers: Optional[dict[str, Any]] = None     # TieredExperts.summary() when a policy ran

    def add_window(self, window: Any, lookup: bool = False) -> None:
        """Count one speculative window (a `speculative.Window`; ``lookup``: its drafts came
        from the context)."""
        self.proposed += len(window.drafts)
        self.accepted += window.verdict.accepted
        if lookup:
            self.lookup_windows += 1
            self.lookup_proposed += len(window.drafts)
            self.lookup_accepted += window.verdict.accepted
        self.verify_steps += 1
        self.draft_seconds += window.catchup_seconds + window.draft_seconds
        self.verify_seconds += window.verify_seconds

    def add_pass(self, k: int, committed: int) -> None:
        """Count one target pass after prefill: K drafts verified (0: plain), tokens committed."""
        self.target_steps += 1
        self.k_histogram[k] = self.k_histogram.get(k, 0) + 1
        self.step_tokens += committed

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per verify pass."""
        return self.accepted / self.verify_steps if self.verify_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_step(self) -> float:
        return self.step_tokens / self.target_steps if self.target_steps else 0.0

    @property
    def total_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: new tokens after the first, over decode time."""
        n = self.new_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    @property
    def ort_seconds(self) -> float:
        return sum(self.piece_seconds.values())

    @property
    def orchestration_seconds(self) -> float:
        """Time outside ORT calls: Python, numpy glue, sampling."""
        return max(0.0, self.total_seconds - self.ort_seconds)

    def render_k_histogram(self) -> str:
        """One line: target passes per K, e.g. ``K per target pass (0 = plain): 0 x12, 1 x30``."""
        counts = ", ".join(f"{k} x{n}" for k, n in sorted(self.k_histogram.items()))
        return f"K per target pass (0 = plain): {counts or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(mean_accepted=self.mean_accepted, acceptance_rate=self.acceptance_rate,
                 tokens_per_target_step=self.tokens_per_target_step,
                 total_seconds=self.total_seconds, tokens_per_second=self.tokens_per_second,
                 ort_seconds=self.ort_seconds, orchestration_seconds=self.orchestration_seconds)
        return d

    def render(self) -> str:
        lines = [
            f"prompt tokens {self.prompt_tokens}, new tokens {self.new_tokens} ({self.stop_reason})",
            f"prefill {self.prefill_seconds * 1e3:.1f} ms, decode {self.tokens_per_second:.1f} tokens/s",
        ]
        if self.speculative:
            lines.append(f"speculative K={self.draft_mode}: proposed {self.proposed}, accepted {self.accepted} "
                         f"({self.acceptance_rate:.0%}), {self.mean_accepted:.2f} accepted per step, "
                         f"{self.tokens_per_target_step:.2f} tokens per target step; draft "
                         f"{self.draft_seconds * 1e3:.0f} ms, verify {self.verify_seconds * 1e3:.0f} ms")
            lines.append(self.render_k_histogram())
            if self.lookup_windows:
                lines.append(f"drafts from the context: {self.lookup_windows} windows, accepted "
                             f"{self.lookup_accepted} of {self.lookup_proposed}")
        if self.tiers:
            t = self.tiers
            fast, cpu = t.get("fast_experts", t.get("experts", "fp32")), t.get("experts", "fp32")
            precision = (f" of {fast} experts" if fast != "fp32" else "") + (
                f", CPU lane {cpu}" if cpu != fast else "")
            lines.append(f"policy {t['policy']} (fast tier: {t['fast_tier']}, {t['fast_slots']} slots{precision}): hit rate "
                         f"{t['hit_rate']:.1%}, fast share {t['fast_share']:.1%}, fetches {t['fetches_on_demand']} "
                         f"on demand + {t['fetches_prefetch']} prefetched, evictions {t['evictions']}, "
                         f"{t['bytes_to_fast_per_token'] / 1e6:.2f} MB to the fast tier per token")
            if t["balancer_paths"]:
                paths = ", ".join(f"{k} {v}" for k, v in t["balancer_paths"].items())
                lines.append(f"balancer: {paths}, median {t['balancer_median_us']:.0f} us; "
                             f"prefetch queue delay median {t['prefetch_queue_delay_ms']:.2f} ms")
        total = self.total_seconds or 1.0
        parts = sorted(self.piece_seconds.items(), key=lambda kv: -kv[1])
        split = ", ".join(f"{k} {v / total:.0%} ({self.piece_calls.get(k, 0)} calls)" for k, v in parts)
        lines.append(f"time: {split}, other {self.orchestration_seconds / total:.0%}")
        return "\n".join(lines)
