"""`TargetBuild`: what a target's `add` works with while a deployment bundle is built."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..manifest import Manifest
from .hardware import HardwareSpec

Progress = Callable[[str, int, int], None]


@dataclass
class TargetBuild:
    """What a target's `add` works with: the base bundle and its manifest, the new
    bundle's temp root, the options, and the files added so far (bundle-relative)."""

    base: Path
    manifest: Manifest
    root: Path
    draft_tokens: int
    hardware: HardwareSpec
    progress: Optional[Progress]
    check: Callable[[], None]
    precision: str = "fp16"           # jetson: the session graphs' precision (fp16 or fp32)
    added: list[str] = dataclasses.field(default_factory=list)

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, rel: str, text: str, mode: int = 0o644) -> None:
        p = self.path(rel)
        p.write_text(text, encoding="utf-8")
        os.chmod(p, mode)
        self.added.append(rel)

    def session_graphs(self) -> list[str]:
        """The base bundle's graphs the runtime opens as sessions (experts are weights)."""
        return sorted(rel for rel in self.manifest.files if rel.endswith(".onnx"))

    def profile_json(self) -> str:
        """The hardware's `DeviceProfile` for this bundle's experts, as JSON (``--profile``)."""
        d = self.manifest.dims
        flops = 2 * 3 * d.hidden_size * d.expert_intermediate          # gate, up, down per token
        profile = self.hardware.profile(self.manifest.expert_bytes(), flops)
        return json.dumps(dataclasses.asdict(profile), indent=1) + "\n"

    def step(self, what: str, done: int, total: int) -> None:
        self.check()
        if self.progress:
            self.progress(what, done, total)
