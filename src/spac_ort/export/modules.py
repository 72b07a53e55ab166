"""Small torch modules, one per bundle piece, exported to ONNX one by one.

Weights are stored pre-transposed (``[in, out]``) and used by ``matmul`` directly so the
exported initializers keep the parameter names (``w_gate``...), which lets the pipeline
substitute another expert's weights into a traced graph. Activations are 3-D
``[1, T, H]`` so exporters emit MatMul, not Gemm.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..manifest import ModelDims, Routing
from .adapters.base import AttentionWeights, SwiGLUWeights
from .config import AttentionSpec, QKNorm


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().to(torch.float32).contiguous(), requires_grad=False)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(var + eps))


class Embed(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.w_embed = _param(weight)                     # [V, H]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:   # [1, T] -> [1, T, H]
        return self.w_embed[input_ids]


class SwiGLU(nn.Module):
    """down(silu(x @ gate) * (x @ up)): one routed expert, a shared expert or a dense MLP."""

    def __init__(self, w: SwiGLUWeights, gate_vector: Optional[torch.Tensor] = None):
        super().__init__()
        self.w_gate = _param(w.gate.t())                  # [H, I]
        self.w_up = _param(w.up.t())                      # [H, I]
        self.w_down = _param(w.down.t())                  # [I, H]
        # Qwen2-MoE shared expert: output scaled by sigmoid(x @ g)
        self.w_shared_gate = _param(gate_vector.t()) if gate_vector is not None else None   # [H, 1]

    def forward(self, normed: torch.Tensor) -> torch.Tensor:      # [1, T, H] -> [1, T, H]
        h = torch.nn.functional.silu(normed @ self.w_gate) * (normed @ self.w_up)
        out = h @ self.w_down
        if self.w_shared_gate is not None:
            out = torch.sigmoid(normed @ self.w_shared_gate) * out
        return out


class Router(nn.Module):
    """logits -> softmax (fp32) -> top-k -> optional renormalisation."""

    def __init__(self, weight: torch.Tensor, top_k: int, routing: Routing):
        super().__init__()
        self.w_router = _param(weight.t())                # [H, E]
        self.top_k = top_k
        self.norm_topk_prob = routing.norm_topk_prob

    def forward(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(normed @ self.w_router, dim=-1)       # [1, T, E]
        weights, ids = torch.topk(probs, self.top_k, dim=-1)        # [1, T, A]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids


class Head(nn.Module):
    def __init__(self, norm: torch.Tensor, lm_head: torch.Tensor, eps: float):
        super().__init__()
        self.w_norm = _param(norm)
        self.w_lm_head = _param(lm_head.t())              # [H, V]
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:      # [1, T, H] -> [1, T, V]
        return rms_norm(hidden, self.w_norm, self.eps) @ self.w_lm_head


class Attention(nn.Module):
    """Input norm, self-attention with KV cache in/out, residual, post-attention norm.

    Inputs: hidden [1, T, H], position_ids [1, T], past_key/value [1, KV, P, D].
    Outputs: hidden_out [1, T, H] (residual added), normed [1, T, H] (post-attention norm),
    present_key/value [1, KV, P+T, D]. Batch size 1, no padding: the causal mask comes
    from the shapes (query t sits at position P + t).
    """

    def __init__(self, w: AttentionWeights, dims: ModelDims, spec: AttentionSpec):
        super().__init__()
        self.nh, self.kv, self.d = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.eps, self.qk_norm, self.clip = spec.rms_eps, spec.qk_norm, spec.clip_qkv
        self.window = spec.sliding_window
        self.w_input_norm = _param(w.input_norm)
        self.w_post_norm = _param(w.post_norm)
        self.w_q, self.w_k = _param(w.q.t()), _param(w.k.t())
        self.w_v, self.w_o = _param(w.v.t()), _param(w.o.t())
        self.b_q = _param(w.q_bias) if w.q_bias is not None else None
        self.b_k = _param(w.k_bias) if w.k_bias is not None else None
        self.b_v = _param(w.v_bias) if w.v_bias is not None else None
        self.b_o = _param(w.o_bias) if w.o_bias is not None else None
        self.w_q_norm = _param(w.q_norm) if spec.qk_norm is not QKNorm.NONE else None
        self.w_k_norm = _param(w.k_norm) if spec.qk_norm is not QKNorm.NONE else None
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, self.d, 2, dtype=torch.int64).float() / self.d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, hidden, position_ids, past_key, past_value):
        t = hidden.shape[1]
        x = rms_norm(hidden, self.w_input_norm, self.eps)
        q, k, v = x @ self.w_q, x @ self.w_k, x @ self.w_v              # [1, T, NH*D] ...
        if self.b_q is not None:
            q, k, v = q + self.b_q, k + self.b_k, v + self.b_v
        if self.qk_norm is QKNorm.FULL:
            q, k = rms_norm(q, self.w_q_norm, self.eps), rms_norm(k, self.w_k_norm, self.eps)
        if self.clip is not None:
            q, k, v = (z.clamp(-self.clip, self.clip) for z in (q, k, v))
        q = q.view(1, t, self.nh, self.d)
        k = k.view(1, t, self.kv, self.d)
        if self.qk_norm is QKNorm.PER_HEAD:
            q, k = rms_norm(q, self.w_q_norm, self.eps), rms_norm(k, self.w_k_norm, self.eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                    # [1, NH, T, D], [1, KV, T, D]
        v = v.view(1, t, self.kv, self.d).transpose(1, 2)
        freqs = position_ids.to(torch.float32)[:, :, None] * self.inv_freq[None, None, :]   # [1, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]                 # [1, 1, T, D]
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        key = torch.cat((past_key, k), dim=2)                            # [1, KV, S, D], S = P + T
        value = torch.cat((past_value, v), dim=2)
        rep = self.nh // self.kv
        s = key.shape[2]
        kk = key[:, :, None].expand(1, self.kv, rep, s, self.d).reshape(1, self.nh, s, self.d)
        vv = value[:, :, None].expand(1, self.kv, rep, s, self.d).reshape(1, self.nh, s, self.d)
        scores = (q @ kk.transpose(2, 3)) * (self.d ** -0.5)             # [1, NH, T, S]
        q_pos = torch.arange(t)[:, None] + (s - t)
        k_pos = torch.arange(s)[None, :]
        blocked = k_pos > q_pos
        if self.window is not None:
            blocked = blocked | (k_pos <= q_pos - self.window)
        scores = scores.masked_fill(blocked, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ vv                        # [1, NH, T, D]
        attn = attn.transpose(1, 2).reshape(1, t, self.nh * self.d) @ self.w_o
        if self.b_o is not None:
            attn = attn + self.b_o
        out = hidden + attn
        return out, rms_norm(out, self.w_post_norm, self.eps), key, value
