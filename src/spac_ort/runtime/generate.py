"""`Generator`: load a bundle, generate tokens, plain or speculative.

    gen = Generator.from_bundle("demo-bundle")
    for token in gen.generate("def fib(n):", max_new_tokens=64):            # speculative
        ...
    print(gen.report.render())

One speculative step (K draft tokens):

    draft:   feed the tokens it has not seen -> propose d_1 .. d_K (greedy or sampled)
    target:  verify [last, d_1 .. d_K] in one pass (T = K+1)     -> logits [K+1, V]
    accept:  greedy prefix / rejection sampling                   -> emitted tokens
    rollback both KV caches to the committed sequence; report the window to observers
"""

from __future__ import annotations

import logging
from pathlib import Path
from time import perf_counter
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import BundleError, ConfigError, PromptError
from ..manifest import Manifest, check_present, load_manifest, verify_files
from .backbone import Backbone
from .draft import DraftModel, find_graph
from ..budget import parse_budget
from ..profile import DeviceProfile
from .engine import TieredExperts
from .experts import GroupedExperts, SessionPerExpert
from .policies import Policy, SpacOptions, make_policy
from .sampling import SamplingConfig, probabilities, sample, select
from .sensor import RoutingRecorder, StepObserver, StepRecord
from .sessions import CPU
from .speculative import Verdict, accept_greedy, accept_sampling
from .stats import RunReport
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _budget(value: Union[str, int, None], total: int, what: str) -> Optional[int]:
    if value is None or isinstance(value, int):
        return value
    return parse_budget(value, total, what)


class Generator:
    def __init__(self, bundle: Path, manifest: Manifest, backbone: Backbone, tokenizer: Optional[Tokenizer],
                 draft: Optional[DraftModel] = None):
        self.bundle = bundle
        self.manifest = manifest
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.draft = draft
        self.report = RunReport()
        self.step_observers: list[StepObserver] = []
        d = manifest.dims
        self._routing = RoutingRecorder(d.num_layers, d.num_experts)
        backbone.observers.append(self._routing)

    @classmethod
    def from_bundle(cls, path: Union[str, Path], *, verify: bool = False, draft: Optional[Union[str, Path]] = None,
                    providers: Sequence[str] = (CPU,), progress: Optional[Progress] = None,
                    policy: Union[str, Policy, None] = None, fast_budget: Union[str, int, None] = None,
                    ram_budget: Union[str, int, None] = None, fast_providers: Sequence[str] = (CPU,),
                    profile: Optional[DeviceProfile] = None, spac: Optional[SpacOptions] = None,
                    synchronous_prefetch: bool = False, experts: str = "grouped") -> "Generator":
        """Load and validate a bundle. ``verify`` also checks every file's sha256.
        ``draft`` names an optimum ONNX export directory to use instead of the bundle's draft.

        Without ``policy`` every expert is resident on the CPU: ``experts="grouped"`` runs a
        layer's routed experts in one ORT call, ``"sessions"`` one session per expert. With a policy
        (resident, cpu, static, sd-static, lru, spac) experts live in tiers: a fast tier of
        ``fast_budget`` ("2GiB", "17%", bytes; default: all experts), the CPU, and the
        bundle's files under ``ram_budget``."""
        bundle = Path(path)
        manifest = load_manifest(bundle)
        if verify:
            verify_files(bundle, manifest, (lambda i, n: progress("verify", i, n)) if progress else None)
        else:
            check_present(bundle, manifest)
        if policy is None:
            if fast_budget is not None or ram_budget is not None:
                raise ConfigError("memory budgets need a placement policy; pass --policy (e.g. spac)")
            if experts == "grouped":
                backend = GroupedExperts(bundle, manifest)
            elif experts == "sessions":
                backend = SessionPerExpert(bundle, manifest, providers,
                                           (lambda i, n: progress("load experts", i, n)) if progress else None)
            else:
                raise ConfigError(f"unknown expert backend '{experts}'; use grouped or sessions")
        else:
            pol = policy if isinstance(policy, Policy) else make_policy(policy, profile, spac)
            total = len(manifest.moe_layers()) * manifest.dims.num_experts * manifest.experts.data_size
            backend = TieredExperts(bundle, manifest, pol, _budget(fast_budget, total, "fast budget"),
                                    _budget(ram_budget, total, "RAM budget"), fast_providers, profile,
                                    synchronous_prefetch)
        backbone = Backbone(bundle, manifest, backend, providers)
        tok = Tokenizer(bundle / manifest.tokenizer) if manifest.tokenizer else None
        draft_model = None
        if draft is not None:
            draft_model = DraftModel(find_graph(Path(draft)), providers)
        elif manifest.draft is not None:
            draft_model = DraftModel(bundle / manifest.draft.graph, providers)
        if draft_model is not None and draft_model.shape.vocab_size not in (-1, manifest.dims.vocab_size):
            raise BundleError(f"the draft's vocabulary ({draft_model.shape.vocab_size}) differs from the target's "
                              f"({manifest.dims.vocab_size}); use a draft that shares the target's tokenizer")
        return cls(bundle, manifest, backbone, tok, draft_model)

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
                 draft_tokens: int = 4, speculative: Optional[bool] = None) -> Iterator[int]:
        """Yield new token ids. Greedy unless ``sampling.temperature > 0``.

        Speculative (``draft_tokens`` = K per step) whenever a draft model is loaded,
        unless ``speculative=False``; the output is the same as without speculation
        (greedy: identical tokens; sampling: the same distribution). Stops after
        ``max_new_tokens``, at an EOS token (yielded), or at the model's maximum positions.
        `self.report` describes the run.
        """
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        self._check_prompt(ids)
        if max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens {max_new_tokens} must be at least 1")
        policy = self.policy
        if speculative is None:
            wanted = policy.speculative if policy is not None else None
            speculative = self.draft is not None if wanted is None else wanted
        if speculative and policy is not None and policy.speculative is False:
            raise ConfigError(f"policy '{policy.name}' decodes without speculation; use sd-static or spac, "
                              "or drop the speculative option")
        if speculative and self.draft is None:
            raise ConfigError(f"bundle {self.bundle} has no draft model; export it with --draft DRAFT_DIR, "
                              "pass a draft directory, or run without speculation")
        if not speculative and policy is not None and policy.speculative is True:
            raise ConfigError(f"policy '{policy.name}' needs speculative decoding (its sensor); "
                              "use a bundle with a draft and leave speculation on")
        if speculative and draft_tokens < 1:
            raise ConfigError(f"draft-tokens {draft_tokens} must be at least 1")
        return self._generate(ids, max_new_tokens, sampling, stop_at_eos, draft_tokens if speculative else 0)

    @property
    def tiered(self) -> Optional[TieredExperts]:
        experts = self.backbone.experts
        return experts if isinstance(experts, TieredExperts) else None

    @property
    def policy(self):
        return self.tiered.policy if self.tiered else None

    def _record(self, kind: str, tokens: int, verdict: Optional[Verdict], emitted: Sequence[int],
                proposed: Sequence[int] = ()) -> None:
        engine = self.tiered
        if not self.step_observers and engine is None:
            return
        rec = StepRecord(step=self._step, kind=kind, tokens=tokens, proposed=tuple(proposed),
                         accepted=verdict.accepted if verdict else 0, emitted=tuple(emitted),
                         counts=self._routing.counts.copy(), topk_ids=dict(self._routing.ids),
                         topk_weights=dict(self._routing.weights),
                         tiers=engine.step_delta() if engine else None)
        if engine is not None:
            engine.on_step(rec)
        for obs in self.step_observers:
            obs.on_step(rec)

    def _generate(self, prompt: list[int], max_new: int, sampling: SamplingConfig, stop_at_eos: bool,
                  k: int) -> Iterator[int]:
        bb, draft = self.backbone, self.draft
        bb.timers.reset()
        self._step = 0
        tiers_mark = self.tiered.mark() if self.tiered is not None else None
        rng = np.random.default_rng(sampling.seed)
        eos = set(self.manifest.eos_token_ids) if stop_at_eos else set()
        report = self.report = RunReport(prompt_tokens=len(prompt), speculative=k > 0, draft_tokens=k)
        limit = self.manifest.dims.max_positions
        if k and self.manifest.draft is not None:
            limit = min(limit, self.manifest.draft.max_positions)
        seq = list(prompt)
        cache = bb.new_cache()
        dcache = draft.new_cache() if k else None
        t0 = perf_counter()
        logits = bb.forward(seq, cache)
        pending = [select(logits[-1], sampling, rng)]
        report.prefill_seconds = perf_counter() - t0
        self._record("prefill", len(seq), None, pending)
        report.stop_reason = "max_new_tokens"
        try:
            yield from self._decode(seq, pending, cache, dcache, max_new, limit, eos, sampling, rng, k, report)
        finally:
            report.piece_seconds = dict(bb.timers.seconds)
            report.piece_calls = dict(bb.timers.calls)
            if self.tiered is not None:
                report.tiers = self.tiered.summary(report.new_tokens, since=tiers_mark)

    def _decode(self, seq, pending, cache, dcache, max_new, limit, eos, sampling, rng, k, report) -> Iterator[int]:
        bb = self.backbone
        t_decode = perf_counter()
        while True:
            for token in pending:                 # emit, stopping inside a window if needed
                seq.append(token)
                report.new_tokens += 1
                report.decode_seconds = perf_counter() - t_decode
                yield token
                t_decode = perf_counter() - report.decode_seconds   # exclude the consumer's time
                if token in eos:
                    report.stop_reason = "eos"
                elif report.new_tokens >= max_new:
                    report.stop_reason = "max_new_tokens"
                elif len(seq) >= limit:
                    report.stop_reason = "max_positions"
                else:
                    continue
                return
            self._step += 1
            # window size: never propose past max_new_tokens or the positions left
            kk = min(k, max_new - report.new_tokens - 1, limit - len(seq))
            report.target_steps += 1
            if kk <= 0:
                logits = bb.forward(seq[-1:], cache)
                pending = [select(logits[-1], sampling, rng)]
                self._record("decode", 1, None, pending)
            else:
                pending = self._speculate(seq, kk, cache, dcache, sampling, rng, report)
            report.step_tokens += len(pending)

    def _speculate(self, seq: list[int], k: int, cache, dcache, sampling: SamplingConfig,
                   rng: np.random.Generator, report: RunReport) -> list[int]:
        t0 = perf_counter()
        feed = seq[dcache.length:]
        drafts: list[int] = []
        q = []
        for _ in range(k):
            dl = self.draft.forward(feed, dcache)
            if sampling.greedy:
                d = int(np.argmax(dl))
            else:
                qi = probabilities(dl, sampling)
                d = sample(qi, rng)
                q.append(qi)
            drafts.append(d)
            feed = [d]
        t1 = perf_counter()
        if self.tiered is not None:
            self.tiered.plan.record("draft", "host", t1 - t0, proposed=k)
        logits = self.backbone.forward([seq[-1], *drafts], cache, last_only=False)     # [K+1, V]
        if sampling.greedy:
            verdict = accept_greedy(drafts, logits)
        else:
            p = np.stack([probabilities(row, sampling) for row in logits])
            verdict = accept_sampling(drafts, np.stack(q), p, rng)
        committed = len(seq) + verdict.accepted        # target cache keeps [.. last, d_1 .. d_n]
        cache.truncate(committed)
        dcache.truncate(min(dcache.length, committed))
        report.draft_seconds += t1 - t0
        self.backbone.timers.add("draft", t1 - t0, k)
        report.verify_seconds += perf_counter() - t1
        report.proposed += k
        report.accepted += verdict.accepted
        report.verify_steps += 1
        self._record("verify", k + 1, verdict, verdict.tokens, drafts)
        return list(verdict.tokens)
