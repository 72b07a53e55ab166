"""Replay tapes: drive a synthetic model (random weights, real size) with what a trained
model did, so its routing has the trained model's locality and its draft is accepted as
often as the trained draft.

A tape is one prompt run greedily on a trained bundle (fused graphs, with a draft):

- the token sequence (prompt + greedy continuation);
- per MoE layer and position, the router's top-k ids and weights, from one teacher-forced
  pass over the sequence;
- per continuation token, whether the draft's greedy choice, given the true prefix, is
  that token. Under greedy decoding the committed prefix is always the target's sequence,
  so a window of K drafts from position p accepts the run of agreeing positions from p,
  up to K: one bit per position serves every K and every draft-control policy.

Replaying (`Replay.attach`) on a synthetic bundle with the same experts per layer and top-k:
the router's outputs are overwritten with the tape's (ids, weights, and logits that give
them to the MoE operator); the target's logits become one-hot on the tape's next token; the
draft's on the tape's token where the bit agrees and on another token where it does not.
Every session still runs at full size, so costs are real; what is replayed is the choices.
Limits: a rejected draft token is routed like the tape's token at its position (the true
one); tape layers map onto synthetic layers proportionally when their counts differ.

    tapes = [record(gen, ids, 64, "python_code") for ids in prompts]     # trained bundle
    save_tapes(path, tapes)
    Replay(load_tapes(path)[0], synthetic_gen.manifest).attach(synthetic_gen)
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..manifest import Manifest

_OFF = -1.0e4           # router logit of an expert the tape did not choose


@dataclass(frozen=True)
class Tape:
    domain: str
    prompt: tuple[int, ...]
    tokens: tuple[int, ...]          # the greedy continuation
    agree: tuple[bool, ...]          # per continuation token: the draft would propose it
    ids: np.ndarray                  # [L, P, A] top-k expert ids per MoE layer and position
    weights: np.ndarray              # [L, P, A] their routing weights

    @property
    def sequence(self) -> tuple[int, ...]:
        return self.prompt + self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "prompt": list(self.prompt), "tokens": list(self.tokens),
                "agree": [int(a) for a in self.agree], "ids": self.ids.tolist(),
                "weights": np.round(self.weights, 5).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tape":
        return cls(d["domain"], tuple(d["prompt"]), tuple(d["tokens"]), tuple(bool(a) for a in d["agree"]),
                   np.asarray(d["ids"], np.int64), np.asarray(d["weights"], np.float32))


def save_tapes(path: Path, tapes: list[Tape]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for t in tapes:
            f.write(json.dumps(t.to_dict()) + "\n")


def load_tapes(path: Path) -> list[Tape]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [Tape.from_dict(json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read replay tapes {path} ({exc}); record them again") from None


def record(gen: Any, prompt: list[int], new_tokens: int, domain: str = "") -> Tape:
    """One tape from a trained `Generator` (fused graphs, with a draft)."""
    bb, draft = gen.backbone, gen.draft
    if draft is None or not hasattr(bb, "replay"):
        raise ConfigError("recording a tape needs a bundle with fused graphs and a draft")
    tokens = list(gen.generate(prompt, max_new_tokens=new_tokens, speculative=False))
    seq = list(prompt) + tokens
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    observe = lambda layer, ids, weights: seen.__setitem__(layer, (ids, weights))   # noqa: E731
    bb.observers.append(observe)
    try:
        bb.forward(seq, bb.new_cache())                  # teacher-forced: every position's routing
    finally:
        bb.observers.remove(observe)
    moe = gen.manifest.moe_layers()
    cache = draft.new_cache()
    logits = draft.forward(list(prompt), cache)
    agree = []
    for tok in tokens:
        agree.append(int(np.argmax(logits)) == tok)
        logits = draft.forward([tok], cache)
    return Tape(domain, tuple(prompt), tuple(tokens), tuple(agree),
                np.stack([seen[layer][0] for layer in moe]).astype(np.int64),
                np.stack([seen[layer][1] for layer in moe]).astype(np.float32))


class Replay:
    """One tape, installed on a synthetic generator's backbone and draft."""

    def __init__(self, tape: Tape, manifest: Manifest):
        d = manifest.dims
        if tape.ids.shape[2] != d.top_k or int(tape.ids.max()) >= d.num_experts:
            raise ConfigError(f"the tape routes top-{tape.ids.shape[2]} of up to {tape.ids.max() + 1} experts; "
                              f"this bundle has top-{d.top_k} of {d.num_experts}: replay it on a matching model")
        if max(tape.sequence) >= d.vocab_size:
            raise ConfigError(f"the tape's tokens exceed this bundle's vocabulary ({d.vocab_size})")
        self.tape = tape
        self.seq = np.asarray(tape.sequence, np.int64)
        self.vocab = d.vocab_size
        moe = manifest.moe_layers()
        taped = tape.ids.shape[0]
        self._source = {layer: i * taped // len(moe) for i, layer in enumerate(moe)}
        self._log_weights = np.log(np.maximum(tape.weights, 1e-30))

    def attach(self, gen: Any) -> "Replay":
        if not hasattr(gen.backbone, "replay") or (gen.draft is not None and not hasattr(gen.draft, "replay")):
            raise ConfigError("replay needs a bundle with fused graphs (export it with --graphs fused)")
        gen.backbone.replay = self
        if gen.draft is not None:
            gen.draft.replay = self
        return self

    @staticmethod
    def detach(gen: Any) -> None:
        gen.backbone.replay = None
        if gen.draft is not None:
            gen.draft.replay = None

    def route(self, layer: int, start: int, ids: np.ndarray, weights: np.ndarray, logits: np.ndarray) -> None:
        """Overwrite one layer's router outputs for positions start .. start+T-1 in place."""
        src = self._source[layer]
        pos = np.arange(start, start + ids.shape[0]) % self.tape.ids.shape[1]
        ids[:] = self.tape.ids[src, pos]
        weights[:] = self.tape.weights[src, pos]
        logits.fill(_OFF)
        np.put_along_axis(logits, ids, self._log_weights[src, pos], axis=1)

    def target(self, logits: np.ndarray, start: int, t: int, last_only: bool) -> None:
        """Target logits [rows, V] of positions start.. -> one-hot on the tape's next token."""
        first = start + t - 1 if last_only else start
        for row in range(logits.shape[0]):
            nxt = first + row + 1
            if nxt < self.seq.size:
                logits[row].fill(0.0)
                logits[row, self.seq[nxt]] = 1.0

    def draft(self, logits: np.ndarray, length: int) -> None:
        """Draft logits [V] after ``length`` tokens -> the tape's token where the draft agreed."""
        n = len(self.tape.prompt)
        if n <= length < self.seq.size:
            tok = int(self.seq[length])
            logits.fill(0.0)
            logits[tok if self.tape.agree[length - n] else (tok + 1) % self.vocab] = 1.0
