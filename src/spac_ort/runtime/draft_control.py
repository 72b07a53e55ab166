"""Draft length control: pick K, the draft tokens of the next speculative step, online.

Pure: no ORT, no clocks. The generator times each step and hands the seconds in.

Legend: K draft tokens, T tokens in a target pass (K+1; plain decoding is K=0, T=1),
a the probability that the target accepts a draft token given the ones before it.

Cost model of one step with K drafts, in units of one plain pass (v seconds):

    tokens(K) = 1 + a + a^2 + .. + a^K = (1 - a^(K+1)) / (1 - a)    accepted prefix + 1
    time(K)   = K * d + verify(K+1)                                  verify(T) = 1 + s*(T-1)
    choose      argmax_K tokens(K) / time(K)                          K=0: one plain pass

Estimates:
- a: decayed counts of verdicts (a window with n of K drafts accepted adds n successes
  and, when n < K, one failure; older verdicts fade by ``1 - smoothing`` each).
- v: lower envelope of plain-pass seconds (a busy machine only ever adds time). The first
  plain pass after the prompt runs cold and is not timed; two more are, before any
  window. After ``anchor_interval`` windows in a row one plain pass measures v again; in
  between, v follows the machine through the windows (v = seconds / (1 + s*(T-1))).
- s, d: each window close to a plain pass gives s = (seconds / v - 1) / (T - 1) and
  d = seconds per draft token / v, tracked like v. Ratios to the v of their moment stay
  valid when the whole machine speeds up or slows down, and one s for every T gathers
  many measurements. s is pulled toward its prior until it has a few.

Two draft sources: the draft model, and the context (`lookup.ContextLookup`: the tokens
that followed the last earlier occurrence of the sequence's tail). Each has its own a and
probe schedule; context drafts cost nothing to propose (d = 0), so their windows pay at a
lower acceptance, and they are offered only where the tail occurred before.

Probes: at K=0 nothing measures a. After ``interval`` plain passes one probe window (the
best K >= 1) is verified. A probe that wins resets the interval; one that loses doubles
it, and stretches it until what the probe lost (its time, the draft catching up on the
skipped tokens included, against one plain pass per emitted token) is at most
``probe_budget`` of the plain passes up to the next probe, up to ``max_probe_interval``.
No probe is spent when fewer tokens remain than the interval: what it could find would
have too little text left to pay off. A seeded sample must repeat, so with
``measure_costs=False`` the seconds are ignored and the cost priors stand in for them.

    control = DraftController(DraftControlConfig())
    pick = control.pick(remaining=tokens_left, lookup=len(context_drafts))  # pick.k 0 = plain pass
    ... draft pick.k tokens (from the context if pick.lookup), verify k+1 ...
    control.observe(pick.k, accepted, draft_seconds, target_seconds, target_tokens=pick.k + 1,
                    catchup_seconds=catchup, lookup=pick.lookup)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..errors import ConfigError

_FULL_WEIGHT = 8        # measurements of s after which its prior no longer counts much
_FRESH = 4              # v is measured, not inferred, for this many steps after a plain pass


@dataclass(frozen=True)
class DraftControlConfig:
    max_k: int = 8                   # largest K the controller may pick
    min_k: int = 0                   # 1 when a policy needs every pass to verify a window
    smoothing: float = 0.1           # acceptance: weight of the newest draft-token verdict
    cost_fall: float = 0.5           # a running cost moves this share toward a lower measurement ...
    cost_rise: float = 0.05          # ... and this share toward a higher one (a busy machine only adds time)
    probe_interval: int = 8          # plain passes before the first probe
    anchor_interval: int = 32        # windows in a row before one plain pass re-measures v
    max_probe_interval: int = 128    # the interval doubles up to this while probes lose ...
    probe_budget: float = 0.01       # ... or grows until a losing probe costs this share of the plain time
    prior_acceptance: float = 0.5    # a before any window was verified ...
    prior_weight: float = 2.0        # ... worth this many draft tokens of evidence
    prior_token_cost: float = 0.25   # s before windows were timed ...
    prior_cost_weight: float = 2.0   # ... and its weight, in timed windows
    prior_draft_cost: float = 0.2    # d before a draft token was timed
    measure_costs: bool = True       # False: decide from acceptance and the cost priors only, so
                                     # the K sequence (and a seeded sample) does not depend on timing

    def __post_init__(self) -> None:
        if not 0 <= self.min_k <= self.max_k or self.max_k < 1:
            raise ConfigError(f"draft control K range [{self.min_k}, {self.max_k}] is empty or below 1; "
                              "use 0 <= min_k <= max_k and max_k >= 1")
        if not (0 < self.smoothing <= 1 and 0 < self.cost_fall <= 1 and 0 < self.cost_rise <= 1):
            raise ConfigError("draft control smoothing, cost_fall and cost_rise must be in (0, 1]")
        if self.anchor_interval < 1:
            raise ConfigError(f"anchor interval {self.anchor_interval} must be at least 1")
        if not 1 <= self.probe_interval <= self.max_probe_interval:
            raise ConfigError(f"probe interval {self.probe_interval} must be in [1, max_probe_interval "
                              f"{self.max_probe_interval}]")
        if not 0 < self.probe_budget <= 1:
            raise ConfigError(f"probe budget {self.probe_budget} must be in (0, 1]")
        if not 0 < self.prior_acceptance < 1 or self.prior_weight <= 0:
            raise ConfigError("prior acceptance must be in (0, 1) with a positive weight")
        if min(self.prior_token_cost, self.prior_draft_cost, self.prior_cost_weight) < 0:
            raise ConfigError("prior token and draft costs and their weight must not be negative")


def expected_tokens(a: float, k: int) -> float:
    """Tokens one step emits with K drafts, per-token acceptance ``a``: accepted prefix + 1."""
    return k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def step_rates(a: float, draft_s: float, verify_v: float, verify_s: float, max_k: int) -> list[float]:
    """Expected tokens per second of a step for K = 0 .. max_k, [max_k + 1]."""
    # verify(T = K+1) = v + s*K; plain Python: this runs before steps
    return [expected_tokens(a, k) / max(k * draft_s + verify_v + verify_s * k, 1e-12) for k in range(max_k + 1)]


def _argmax(values: list[float], lo: int) -> int:
    return max(range(lo, len(values)), key=values.__getitem__)


class _Cost:
    """Running value near the lower envelope of its measurements: it moves ``fall`` of the
    way toward a lower one and ``rise`` of the way toward a higher one."""

    def __init__(self, fall: float, rise: float):
        self.fall, self.rise = fall, rise
        self.mean = 0.0
        self.n = 0

    def add(self, value: float) -> None:
        self.n += 1
        if self.n == 1:
            self.mean = value
        else:
            self.mean += (self.fall if value < self.mean else self.rise) * (value - self.mean)


class Pick(NamedTuple):
    """The next step: K drafts (0 = a plain pass), from the context or the draft model."""

    k: int
    lookup: bool = False


class _Source:
    """One draft source's decayed verdicts and probe schedule."""

    def __init__(self, config: DraftControlConfig):
        self.accepted = 0.0                     # decayed draft tokens accepted
        self.rejected = 0.0                     # decayed rejections (at most one per window)
        self.interval = config.probe_interval
        self.idle = config.probe_interval      # target passes since this source's last window

    def acceptance(self, c: DraftControlConfig) -> float:
        return (self.accepted + c.prior_acceptance * c.prior_weight) / (
            self.accepted + self.rejected + c.prior_weight)

    def verdict(self, accepted: int, k: int, smoothing: float) -> None:
        rejected = 1 if accepted < k else 0
        keep = (1.0 - smoothing) ** (accepted + rejected)
        self.accepted = keep * self.accepted + accepted
        self.rejected = keep * self.rejected + rejected

    @property
    def probing(self) -> bool:
        return self.idle >= self.interval


class DraftController:
    """Picks K per step from measured acceptance and costs; see the module docstring."""

    mode = "auto"

    def __init__(self, config: DraftControlConfig = DraftControlConfig()):
        self.config = config
        self._model = _Source(config)           # drafts of the draft model
        self._context = _Source(config)         # drafts looked up in the context (d = 0)
        self._plain = self._cost()              # v: seconds of a plain pass
        self._token = self._cost()              # s: seconds a token adds to a target pass / v
        self._draft = self._cost()              # d: seconds per draft token / v
        self._since_plain = _FRESH                              # steps since the last plain pass
        self._plain_seen = 0                                    # plain passes observed, timed or not
        self._update()

    def _cost(self) -> _Cost:
        return _Cost(self.config.cost_fall, self.config.cost_rise)

    @property
    def largest(self) -> int:
        return self.config.max_k

    # ---- estimates ---------------------------------------------------------------------
    @property
    def acceptance(self) -> float:
        """a of the draft model's tokens."""
        return self._model.acceptance(self.config)

    @property
    def lookup_acceptance(self) -> float:
        """a of drafts looked up in the context."""
        return self._context.acceptance(self.config)

    def token_cost(self) -> float:
        """s: what one more token adds to a target pass, in plain passes; the measured
        value and the prior weighted by their counts (the measurements' up to a limit)."""
        c = self.config
        n = min(self._token.n, _FULL_WEIGHT)
        return (c.prior_cost_weight * c.prior_token_cost + n * self._token.mean) / (c.prior_cost_weight + n)

    def draft_cost(self) -> float:
        """d: seconds per draft token, in plain passes."""
        return self._draft.mean if self._draft.n else self.config.prior_draft_cost

    def rates(self) -> list[float]:
        """Expected tokens per plain-pass time for K = 0 .. max_k, [max_k + 1]."""
        return step_rates(self.acceptance, self.draft_cost(), 1.0, self.token_cost(), self.config.max_k)

    def lookup_rates(self) -> list[float]:
        """The same for drafts from the context, which cost nothing to propose."""
        return step_rates(self.lookup_acceptance, 0.0, 1.0, self.token_cost(), self.config.max_k)

    def _update(self) -> None:
        self._rates, self._lookup_rates = self.rates(), self.lookup_rates()
        self._best = _argmax(self._rates, self.config.min_k)     # highest expected rate, K >= min_k
        self._best_window = _argmax(self._rates, 1)              # the same among K >= 1: a probe's K

    def best(self) -> int:
        """The K with the highest expected rate, at least ``min_k`` (no probing)."""
        return self._best

    # ---- decisions ---------------------------------------------------------------------
    @property
    def probing(self) -> bool:
        """The next window of the draft model (if any) is a probe after a run of plain passes."""
        return self._model.probing

    def choose(self, remaining: Optional[int] = None) -> int:
        """K of the draft model for the next step; 0 = a plain pass (no context drafts)."""
        return self.pick(remaining).k

    def pick(self, remaining: Optional[int] = None, lookup: int = 0) -> Pick:
        """The next step. ``remaining``: tokens still to generate, if known; ``lookup``: how
        many drafts the context offers (0: none). Does not change the state."""
        c = self.config
        if c.measure_costs and c.min_k == 0 and (self._plain.n < 2 or self._since_plain >= c.anchor_interval):
            return Pick(0)                      # (re)measure v, the unit of all costs
        if lookup:
            lk = _argmax(self._lookup_rates[:min(lookup, c.max_k) + 1], 1)
            if self._lookup_rates[lk] > self._rates[self._best] or self._probe(self._context, remaining):
                return Pick(lk, True)
        if self._probe(self._model, remaining):
            return Pick(self._best_window)
        return Pick(self._best)

    def _probe(self, source: _Source, remaining: Optional[int]) -> bool:
        """Probe ``source`` now: plain passes are the best guess, its interval is over, and
        enough tokens remain for what a probe finds to pay off."""
        return self._best == 0 and source.probing and (remaining is None or remaining >= source.interval)

    def observe(self, k: int, accepted: int, draft_seconds: float, target_seconds: float,
                target_tokens: int, catchup_seconds: float = 0.0, lookup: bool = False) -> None:
        """Record a step: K drafts (0 = plain; ``lookup``: from the context), ``accepted`` of
        them kept, the seconds spent drafting them and in the target pass over
        ``target_tokens`` (T) tokens, and before that letting the draft read tokens it skipped."""
        assert 0 <= accepted <= k and target_tokens >= 1, (k, accepted, target_tokens)
        if self.config.measure_costs:
            self._time(0 if lookup else k, draft_seconds, target_seconds, target_tokens)
        used = (self._context if lookup else self._model) if k else None
        for source in (self._model, self._context):
            if source is not used:
                source.idle += 1
        if used is None:                        # a, s and d are unchanged: so is the decision
            return
        used.verdict(accepted, k, self.config.smoothing)
        self._update()
        if used.probing:
            lost = catchup_seconds + draft_seconds + target_seconds - (accepted + 1) * self._plain.mean
            still_plain = self._best == 0 and (used is self._model or self._lookup_rates[k] <= 1.0)
            used.interval = self._next_interval(used, lost) if still_plain else self.config.probe_interval
        used.idle = 0

    def _next_interval(self, source: _Source, lost_seconds: float) -> int:
        """Plain passes before the next probe, after one that lost ``lost_seconds``."""
        c = self.config
        budget = lost_seconds / (c.probe_budget * self._v) if self._plain.n else 0.0
        return int(min(max(2 * source.interval, budget), c.max_probe_interval))

    def _time(self, k: int, draft_seconds: float, target_seconds: float, target_tokens: int) -> None:
        if target_tokens == 1:
            self._plain_seen += 1
            self._since_plain = 0
            if self._plain_seen > 1:            # the first one after the prompt runs cold
                self._plain.add(target_seconds)
            return
        self._since_plain += 1
        if self._since_plain <= _FRESH and self._plain.n:
            self._token.add(max(0.0, target_seconds / self._v - 1.0) / (target_tokens - 1))
        else:                                   # v of a while ago (or none, min_k >= 1): follow the machine
            self._plain.add(target_seconds / (1.0 + self.token_cost() * (target_tokens - 1)))
        if k:
            self._draft.add(draft_seconds / k / self._v)

    @property
    def _v(self) -> float:
        return max(self._plain.mean, 1e-12)


class FixedDraft:
    """The same K every step (``--draft-tokens N``); 0 = plain decoding."""

    def __init__(self, k: int):
        self.k = k

    @property
    def mode(self) -> int:
        return self.k

    @property
    def largest(self) -> int:
        return self.k

    def choose(self, remaining: Optional[int] = None) -> int:
        return self.k

    def pick(self, remaining: Optional[int] = None, lookup: int = 0) -> Pick:
        return Pick(self.k)

    def observe(self, k: int, accepted: int, draft_seconds: float, target_seconds: float,
                target_tokens: int, catchup_seconds: float = 0.0, lookup: bool = False) -> None:
        pass
