"""Run `spac-bench`'s grid in one process: one generator per policy, budget and slot
precision (its
placement stays warm across K values and prompts), every prompt once per cell after one
unmeasured warm-up. With replay tapes (`runtime.tape`) the routing and the draft's
agreement come from the tape, and each run must reproduce the tape's tokens.
"""

from __future__ import annotations

from contextlib import ExitStack
from itertools import groupby
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

from ..profile import DeviceProfile
from ..runtime.sessions import CPU
from .grid import Cell, Prompt, RunResult

Progress = Callable[[str, int, int], None]
Profiles = Union[DeviceProfile, Mapping[Optional[str], DeviceProfile], None]   # one, or one per slot precision

# used when no prompts file is given: one short prompt per kind of text
DEFAULT_PROMPTS = (
    ("python_code", "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"\n"),
    ("python_docs", "The asyncio module provides infrastructure for writing"),
    ("c_code", "static int parse_header(const char *buf, size_t len)\n{\n"),
    ("man_en", "NAME\n    grep - print lines that match patterns\n\nDESCRIPTION\n"),
    ("english_prose", "The village lay at the foot of the mountain, and every spring"),
    ("german", "Die Stadt liegt am Ufer des Flusses und ist bekannt für"),
    ("romance", "La ciudad se encuentra a orillas del río y es conocida por"),
    ("chinese", "这座城市位于河边，以其"),
)


def default_prompts(max_new_tokens: int) -> list[Prompt]:
    return [Prompt(text, None, domain, max_new_tokens) for domain, text in DEFAULT_PROMPTS]


def tape_prompts(tapes: Sequence, per_domain: Optional[int]) -> list[tuple[Prompt, object]]:
    """Prompts of replay tapes (their ids and length), the first ``per_domain`` of each domain."""
    seen: dict[str, int] = {}
    out = []
    for tape in tapes:
        if per_domain is None or seen.get(tape.domain, 0) < per_domain:
            seen[tape.domain] = seen.get(tape.domain, 0) + 1
            out.append((Prompt(None, tuple(tape.prompt), tape.domain, len(tape.tokens)), tape))
    return out


def _generator(bundle: Path, cell: Cell, fast_provider: Sequence[str], threads: int,
               profile: Optional[DeviceProfile], backbone: Sequence[str],
               link: Optional[float], quant: tuple[Optional[str], Optional[str]]):  # type: ignore[no-untyped-def]
    from ..runtime import Generator
    from ..runtime.config import TierConfig

    if cell.policy == "none":
        return Generator.from_bundle(bundle, threads=threads, providers=backbone)
    tiers = TierConfig(cell.policy, cell.budget, None, tuple(fast_provider), profile=profile, link_bytes_per_s=link,
                       expert_quant=quant[0], fast_quant=cell.fast_quant or quant[1])
    return Generator.from_bundle(bundle, threads=threads, providers=backbone, tiers=tiers)


def _one(gen, cell: Cell, prompt: Prompt, tape) -> RunResult:  # type: ignore[no-untyped-def]
    if tape is not None:
        from ..runtime.tape import Replay
        Replay(tape, gen.manifest).attach(gen)
    plain = cell.k is None or cell.k == 0
    out = list(gen.generate(list(prompt.ids) if prompt.ids is not None else prompt.text,
                            max_new_tokens=prompt.max_new_tokens, stop_at_eos=tape is not None,
                            draft_tokens=4 if plain else cell.k, speculative=False if plain else None))
    r = gen.report
    tiers = r.tiers or {}
    return RunResult(cell, prompt.domain, r.new_tokens, r.decode_seconds, r.mean_accepted,
                     tiers.get("hit_rate"), tiers.get("fast_share"), float(tiers.get("bytes_to_fast", 0.0)),
                     dict(tiers.get("layer_seconds", {})),
                     None if tape is None else out == list(tape.tokens))


def run_grid(bundle: Path, cells: Sequence[Cell], prompts: Sequence[tuple[Prompt, object]], *,
             fast_provider: Sequence[str] = (CPU,), backbone: Sequence[str] = (CPU,), threads: int = 1,
             profile: Profiles = None, link_bytes_per_s: Optional[float] = None,
             progress: Optional[Progress] = None, expert_quant: tuple[Optional[str], Optional[str]] = (None, None),
             interleave: bool = False) -> list[RunResult]:
    """Every cell on every prompt ((prompt, tape or None) pairs); results in run order.

    One generator per policy and budget, warmed up once. By default they run one after
    another (one in memory at a time). ``interleave``: all of them are held at once, and
    each prompt runs through every cell, in an order that rotates from prompt to prompt,
    so a slow spell of the machine falls on all cells alike. ``profile``: one for every
    cell, or one per slot precision (`Cell.fast_quant`)."""
    total, done = len(cells) * len(prompts), 0
    results: list[RunResult] = []
    groups = [list(g) for _, g in groupby(cells, key=_generator_key)]

    def make(cell: Cell):  # type: ignore[no-untyped-def]
        # a slot-free cell (cpu) runs at the run's own precision, and takes its profile
        chosen = profile.get(cell.fast_quant or expert_quant[1]) if isinstance(profile, Mapping) else profile
        gen = _generator(bundle, cell, fast_provider, threads, chosen, backbone, link_bytes_per_s, expert_quant)
        _one(gen, cell, *prompts[0])                                 # warm-up, not counted
        return gen

    def step(gen, cell: Cell, prompt: Prompt, tape) -> None:  # type: ignore[no-untyped-def]
        nonlocal done
        results.append(_one(gen, cell, prompt, tape))
        done += 1
        if progress is not None:
            progress(f"{cell.label}", done, total)

    with ExitStack() as stack:
        if not interleave:
            for group in groups:
                with make(group[0]) as gen:
                    for cell in group:
                        for prompt, tape in prompts:
                            step(gen, cell, prompt, tape)
            return results
        gens = {_generator_key(g[0]): stack.enter_context(make(g[0])) for g in groups}
        for i, (prompt, tape) in enumerate(prompts):
            for cell in [*cells[i % len(cells):], *cells[: i % len(cells)]]:
                step(gens[_generator_key(cell)], cell, prompt, tape)
    return results


def _generator_key(cell: Cell) -> tuple:
    """Cells that share a generator (its placement stays warm across K and prompts)."""
    return cell.policy, cell.budget, cell.fast_quant
