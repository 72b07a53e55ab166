"""`Generator`: load a bundle, generate tokens.

    gen = Generator.from_bundle("demo-bundle")
    for token in gen.generate("def fib(n):", max_new_tokens=64):
        ...
    print(gen.report.render())
"""

from __future__ import annotations

import logging
from pathlib import Path
from time import perf_counter
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .. import naming
from ..errors import BundleError, ConfigError, PromptError
from ..manifest import Manifest, check_present, load_manifest, verify_files
from .backbone import Backbone
from .experts import SessionPerExpert
from .sampling import SamplingConfig, select
from .sessions import CPU
from .stats import RunReport
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


class Generator:
    def __init__(self, bundle: Path, manifest: Manifest, backbone: Backbone, tokenizer: Optional[Tokenizer]):
        self.bundle = bundle
        self.manifest = manifest
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.report = RunReport()

    @classmethod
    def from_bundle(cls, path: Union[str, Path], *, verify: bool = False,
                    providers: Sequence[str] = (CPU,), progress: Optional[Progress] = None) -> "Generator":
        """Load and validate a bundle. ``verify`` also checks every file's sha256."""
        bundle = Path(path)
        manifest = load_manifest(bundle)
        if verify:
            verify_files(bundle, manifest, (lambda i, n: progress("verify", i, n)) if progress else None)
        else:
            check_present(bundle, manifest)
        experts = SessionPerExpert(bundle, manifest, providers,
                                   (lambda i, n: progress("load experts", i, n)) if progress else None)
        backbone = Backbone(bundle, manifest, experts, providers)
        tok = Tokenizer(bundle / manifest.tokenizer) if manifest.tokenizer else None
        return cls(bundle, manifest, backbone, tok)

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
                 sampling: SamplingConfig = SamplingConfig(), stop_at_eos: bool = True) -> Iterator[int]:
        """Yield new token ids one by one. Greedy unless ``sampling.temperature > 0``.

        Stops after ``max_new_tokens``, at an EOS token (yielded), or when the model's
        maximum positions are reached. `self.report` describes the finished run.
        """
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        self._check_prompt(ids)
        if max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens {max_new_tokens} must be at least 1")
        return self._generate(ids, max_new_tokens, sampling, stop_at_eos)

    def _generate(self, ids: list[int], max_new: int, sampling: SamplingConfig, stop_at_eos: bool) -> Iterator[int]:
        bb = self.backbone
        bb.timers.reset()
        rng = np.random.default_rng(sampling.seed)
        eos = set(self.manifest.eos_token_ids) if stop_at_eos else set()
        report = self.report = RunReport(prompt_tokens=len(ids))
        cache = bb.new_cache()
        limit = self.manifest.dims.max_positions
        t0 = perf_counter()
        logits = bb.forward(ids, cache)
        token = select(logits[-1], sampling, rng)
        report.prefill_seconds = perf_counter() - t0
        t_decode = perf_counter()
        report.stop_reason = "max_new_tokens"
        try:
            while True:
                report.new_tokens += 1
                report.decode_seconds = perf_counter() - t_decode
                yield token
                t_decode = perf_counter() - report.decode_seconds   # exclude consumer time
                if token in eos:
                    report.stop_reason = "eos"
                    break
                if report.new_tokens >= max_new:
                    break
                if cache.length >= limit:
                    report.stop_reason = "max_positions"
                    break
                logits = bb.forward([token], cache)
                token = select(logits[-1], sampling, rng)
        finally:
            report.piece_seconds = dict(bb.timers.seconds)
            report.piece_calls = dict(bb.timers.calls)
