"""The weights of one piece, as the export modules take them (``nn.Linear`` convention,
``[out, in]``), whatever the checkpoint's layout. Adapters fill them; modules consume them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SwiGLUWeights:
    gate: torch.Tensor   # [I, H]
    up: torch.Tensor     # [I, H]
    down: torch.Tensor   # [H, I]


@dataclass(frozen=True)
class AttentionWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: Optional[torch.Tensor]
    k_bias: Optional[torch.Tensor]
    v_bias: Optional[torch.Tensor]
    o_bias: Optional[torch.Tensor]
    q_norm: Optional[torch.Tensor]
    k_norm: Optional[torch.Tensor]


@dataclass(frozen=True)
class MLASpec:
    kv_lora_rank: int
    q_lora_rank: Optional[int]
    nope_dim: int
    rope_dim: int
    v_dim: int
    rope_interleaved: bool = True


@dataclass(frozen=True)
class MLAWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: Optional[torch.Tensor]
    q_a: Optional[torch.Tensor]
    q_a_norm: Optional[torch.Tensor]
    q_b: Optional[torch.Tensor]
    kv_a: torch.Tensor
    kv_a_norm: torch.Tensor
    kv_b: torch.Tensor
    o: torch.Tensor
