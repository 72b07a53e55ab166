"""`Generator`: load a bundle, generate tokens, plain or speculative.

    with Generator.from_bundle("demo-bundle") as gen:
        for token in gen.generate("def fib(n):", max_new_tokens=64):        # speculative
            ...
        print(gen.report.render())

The decode loop: emit the pending tokens; pick K (fixed ``draft_tokens=4``, or per step
by a `DraftController` for ``"auto"`` from the acceptance and the times it measured);
K=0 is a plain pass, K>0 a `speculative_step` (draft K -> verify K+1 -> accept -> roll
back); hand the pass's `StepRecord` to the observers (the tiered backend is one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import BundleError, ConfigError, PromptError
from ..manifest import Manifest
from .backbone import Backbone
from .config import TierConfig
from .draft import DraftModel
from .draft_control import DraftControlConfig, DraftController, FixedDraft
from .lookup import ContextLookup
from .loading import load
from .sampling import SamplingConfig, select
from .sensor import RoutingRecorder, StepObserver, StepRecord
from .sessions import CPU, ORT_ERRORS, session_threads
from .spac.policies import Policy
from .speculative import Window, speculative_step
from .stats import RunReport
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Control = Union[DraftController, FixedDraft]


def _bundle_faults(tokens: Iterator[int], bundle: Path) -> Iterator[int]:
    """Pass tokens through; an ORT error from a session call (a graph that disagrees with
    the manifest or with another graph) becomes a `BundleError`."""
    try:
        yield from tokens
    except ORT_ERRORS as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"running bundle {bundle} failed ({first}); its graphs do not fit its manifest: check it "
                          "with spac-export inspect BUNDLE --verify and re-export it") from None


class Generator:
    def __init__(self, bundle: Path, manifest: Manifest, backbone: Backbone, tokenizer: Optional[Tokenizer],
                 draft: Optional[DraftModel] = None, policy: Optional[Policy] = None):
        self.bundle = bundle
        self.manifest = manifest
        self.backbone = backbone
        self.experts = backbone.experts
        self.tokenizer = tokenizer
        self.draft = draft
        self.policy = policy
        self.report = RunReport()
        self.step_observers: list[StepObserver] = []
        # the tiered backend learns from every pass; it sees a record before the user's observers
        self._observers: list[StepObserver] = [self.experts] if policy is not None else []
        d = manifest.dims
        self._routing = RoutingRecorder(d.num_layers, d.num_experts)
        self._step = 0

    @classmethod
    def from_bundle(cls, path: Union[str, Path], *, verify: bool = False, draft: Optional[Union[str, Path]] = None,
                    providers: Sequence[str] = (CPU,), experts: str = "auto", tiers: Optional[TierConfig] = None,
                    progress: Optional[Progress] = None, threads: int = 1) -> "Generator":
        """Load and validate a bundle. ``verify`` also checks every file's sha256.
        ``draft`` names an optimum ONNX export directory to use instead of the bundle's draft.

        Without ``tiers`` every expert is resident on the CPU: ``experts="moe"`` runs a layer's
        routed experts in one ``com.microsoft.MoE`` call, ``"grouped"`` in one call of standard
        operators, ``"sessions"`` one session per expert; ``"auto"``: moe for bundles with
        fused graphs, else grouped. With
        a `TierConfig` a placement policy puts experts on a fast tier under a budget, the
        CPU, and the bundle's files (see `TierConfig`). ``threads``: intra-op threads of
        every ONNX Runtime session the generator builds."""
        with session_threads(threads):
            parts = load(path, verify=verify, draft=draft, providers=providers, experts=experts, tiers=tiers,
                         progress=progress)
        return cls(parts.bundle, parts.manifest, parts.backbone, parts.tokenizer, parts.draft, parts.policy)

    def close(self) -> None:
        """Stop the backend's worker threads (the tiered backend's prefetch and lanes)."""
        self.experts.close()

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- prompts -----------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise BundleError(f"bundle {self.bundle} has no tokenizer; pass token ids instead of text")
        if not prompt:
            raise PromptError("the prompt is empty; pass some text with --prompt or --prompt-file")
        return self.tokenizer.encode(prompt)

    def _check_prompt(self, ids: list[int]) -> None:
        limit = self.manifest.dims.max_positions
        if not ids:
            raise PromptError("the prompt is empty; pass some text with --prompt or --prompt-file")
        if len(ids) >= limit:
            raise PromptError(f"the prompt has {len(ids)} tokens but the model takes at most {limit} positions; "
                              f"shorten the prompt to fewer than {limit} tokens")
        bad = [i for i in ids if not 0 <= i < self.manifest.dims.vocab_size]
        if bad:
            raise PromptError(f"token id {bad[0]} is outside the vocabulary (0..{self.manifest.dims.vocab_size - 1})")

    # ---- generation --------------------------------------------------------------------
    def generate(self, prompt: Union[str, Sequence[int]], *, max_new_tokens: int = 128,
                 sampling: SamplingConfig = SamplingConfig(), stop_at_eos: bool = True,
                 draft_tokens: Union[int, str] = "auto", speculative: Optional[bool] = None,
                 lookup: bool = True) -> Iterator[int]:
        """Yield new token ids. Greedy unless ``sampling.temperature > 0``.

        Speculative whenever a draft model is loaded, unless ``speculative=False``:
        ``draft_tokens`` = K per step, or ``"auto"`` to pick K per step from measured
        acceptance and costs, plain passes (K=0) included unless the policy needs a window
        every pass; without a draft, ``"auto"`` decodes plainly. ``"auto"`` also drafts from
        the context (the tokens that followed an earlier occurrence of the last few) where
        that pays, unless ``lookup=False``. The output is the same as
        without speculation (greedy: identical tokens; sampling: the same distribution). Stops after
        ``max_new_tokens``, at an EOS token (yielded), or at the model's maximum positions.
        `self.report` describes the run.
        """
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        self._check_prompt(ids)
        if max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens {max_new_tokens} must be at least 1")
        spec = self._speculative(speculative, draft_tokens)
        control = self._draft_control(draft_tokens, spec, self.policy, sampling)
        context = ContextLookup() if lookup and isinstance(control, DraftController) else None
        return _bundle_faults(self._generate(ids, max_new_tokens, sampling, stop_at_eos, control, context),
                              self.bundle)

    def _speculative(self, wanted: Optional[bool], draft_tokens: Union[int, str]) -> bool:
        """Speculate or not: the caller's choice, else the policy's, else whenever a draft is
        loaded (``auto`` without a draft decodes plainly)."""
        policy = self.policy
        needs = policy.speculative if policy is not None else None
        if wanted is None:
            wanted = needs if needs is not None else self.draft is not None or draft_tokens != "auto"
        if wanted and needs is False:
            raise ConfigError(f"policy '{policy.name}' decodes without speculation; use sd-static or spac, "
                              "or drop the speculative option")
        if not wanted and needs is True:
            raise ConfigError(f"policy '{policy.name}' needs speculative decoding (its sensor); "
                              "use a bundle with a draft and leave speculation on")
        if wanted and self.draft is None:
            raise ConfigError(f"bundle {self.bundle} has no draft model; export it with --draft DRAFT_DIR, "
                              "pass a draft directory, or run without speculation")
        return bool(wanted)

    @staticmethod
    def _draft_control(draft_tokens: Union[int, str], speculative: bool, policy: Optional[Policy],
                       sampling: SamplingConfig) -> Union[DraftController, FixedDraft]:
        """The K source of a run: fixed K, the adaptive controller, or FixedDraft(0) = plain.

        A seeded sample must repeat, so its K sequence must not depend on timing: the
        controller then weighs acceptance against its cost priors only."""
        if draft_tokens != "auto" and (isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int)):
            raise ConfigError(f"draft-tokens {draft_tokens!r} is neither a number nor 'auto'; "
                              "pass a positive integer or auto")
        if not speculative:
            return FixedDraft(0)
        if draft_tokens == "auto":
            needs_window = policy is not None and policy.speculative is True
            timed = sampling.greedy or sampling.seed is None
            return DraftController(DraftControlConfig(min_k=1 if needs_window else 0, measure_costs=timed))
        if draft_tokens < 1:
            raise ConfigError(f"draft-tokens {draft_tokens} must be at least 1")
        return FixedDraft(draft_tokens)

    def _record(self, kind: str, tokens: int, emitted: Sequence[int], window: Optional[Window] = None) -> None:
        observers = self._observers + self.step_observers
        if not observers:
            return
        rec = StepRecord(step=self._step, kind=kind, tokens=tokens,
                         proposed=window.drafts if window else (),
                         accepted=window.verdict.accepted if window else 0, emitted=tuple(emitted),
                         counts=self._routing.counts.copy(), topk_ids=dict(self._routing.ids),
                         topk_weights=dict(self._routing.weights), tiers=self.experts.step_counters(),
                         draft_seconds=window.catchup_seconds + window.draft_seconds if window else 0.0)
        for obs in observers:
            obs.on_step(rec)

    def _generate(self, prompt: list[int], max_new: int, sampling: SamplingConfig, stop_at_eos: bool,
                  control: Control, context: Optional[ContextLookup]) -> Iterator[int]:
        bb, draft = self.backbone, self.draft
        k = control.largest                     # 0: plain decoding, the draft is not used
        bb.greedy = sampling.temperature == 0                      # only argmaxes are read
        recording = bool(self._observers or self.step_observers)   # routing is recorded for them only
        if recording != (self._routing in bb.observers):
            (bb.observers.append if recording else bb.observers.remove)(self._routing)
        bb.timers.reset()
        self._step = 0
        mark = self.experts.mark()
        rng = np.random.default_rng(sampling.seed)
        eos = set(self.manifest.eos_token_ids) if stop_at_eos else set()
        report = self.report = RunReport(prompt_tokens=len(prompt), speculative=k > 0, draft_tokens=k,
                                         draft_mode=control.mode)
        limit = self.manifest.dims.max_positions
        if k and self.manifest.draft is not None:
            limit = min(limit, self.manifest.draft.max_positions)
        seq = list(prompt)
        cache = bb.new_cache()
        dcache = draft.new_cache() if k else None
        t0 = perf_counter()
        logits = bb.forward(seq, cache)
        pending = [select(logits[-1], sampling, rng)]
        if dcache is not None and len(seq) < limit:     # the draft reads the prompt too: part of prefill
            t_draft = perf_counter()
            draft.forward(seq, dcache)
            bb.timers.add("draft", perf_counter() - t_draft)
        self._record("prefill", len(seq), pending)          # observers' work (e.g. a warm start) counts too
        report.prefill_seconds = perf_counter() - t0
        report.prefill_piece_seconds = dict(bb.timers.seconds)
        report.stop_reason = "max_new_tokens"
        try:
            yield from self._decode(seq, pending, (cache, dcache), max_new, limit, eos, sampling, rng, control,
                                    context)
        finally:
            report.piece_seconds = dict(bb.timers.seconds)
            report.piece_calls = dict(bb.timers.calls)
            report.tiers = self.experts.summary(report.new_tokens, since=mark)

    def _decode(self, seq: list[int], pending: list[int], caches: tuple[Any, Any], max_new: int, limit: int,
                eos: set[int], sampling: SamplingConfig, rng: np.random.Generator, control: Control,
                context: Optional[ContextLookup]) -> Iterator[int]:
        report = self.report
        t_decode = perf_counter()
        while True:
            for token in pending:                 # emit, stopping inside a window if needed
                seq.append(token)
                report.new_tokens += 1
                report.decode_seconds = perf_counter() - t_decode
                yield token
                t_decode = perf_counter() - report.decode_seconds   # exclude the consumer's time
                report.stop_reason = ("eos" if token in eos else "max_new_tokens" if report.new_tokens >= max_new
                                      else "max_positions" if len(seq) >= limit else "")
                if report.stop_reason:
                    return
            self._step += 1
            # window size: never propose past max_new_tokens or the positions left
            left = min(max_new - report.new_tokens, limit - len(seq) + 1)       # tokens still to generate
            offered = context.propose(seq, min(control.largest, left - 1)) if context is not None else []
            pick = control.pick(remaining=left, lookup=len(offered))
            k = max(0, min(pick.k, left - 1))
            pending = self._step_once(seq, k, caches, sampling, rng, control, offered[:k] if pick.lookup else None)

    def _step_once(self, seq: list[int], k: int, caches: tuple[Any, Any], sampling: SamplingConfig,
                   rng: np.random.Generator, control: Control, proposed: Optional[list[int]] = None) -> list[int]:
        """One target pass: plain (K=0) or a speculative window (``proposed``: its drafts,
        from the context); reported and observed."""
        t_step = perf_counter()
        cache, dcache = caches
        if k == 0:
            logits = self.backbone.forward(seq[-1:], cache)
            pending = [select(logits[-1], sampling, rng)]
            self._record("decode", 1, pending)
            control.observe(0, 0, 0.0, perf_counter() - t_step, 1)
        else:
            window = speculative_step(self.draft, self.backbone, seq, k, cache, dcache, sampling, rng, proposed)
            self.backbone.timers.add("draft", window.catchup_seconds + window.draft_seconds, k)
            self.report.add_window(window, lookup=proposed is not None)
            pending = list(window.verdict.tokens)
            self._record("verify", k + 1, pending, window)
            control.observe(k, window.verdict.accepted, window.draft_seconds,
                            perf_counter() - t_step - window.draft_seconds - window.catchup_seconds, k + 1,
                            catchup_seconds=window.catchup_seconds, lookup=proposed is not None)
        self.report.add_pass(k, len(pending))
        return pending
