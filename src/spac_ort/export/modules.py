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

from ..manifest import ModelDims, Routing, Scoring, TopkMethod
from .config import AttentionSpec, QKNorm
from .weights import AttentionWeights, MLASpec, MLAWeights, SwiGLUWeights


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
    """logits -> softmax (fp32) -> [group-limited] top-k -> optional renormalisation
    -> optional scaling."""

    def __init__(self, weight: torch.Tensor, top_k: int, routing: Routing, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.w_router = _param(weight.t())                # [H, E]
        self.b_score = _param(bias) if bias is not None else None    # e_score_correction_bias [E]
        self.top_k = top_k
        self.sigmoid = routing.scoring is Scoring.SIGMOID
        self.norm_topk_prob = routing.norm_topk_prob
        self.method = routing.topk_method
        self.n_group, self.topk_group = routing.n_group, routing.topk_group
        self.scale = routing.routed_scaling_factor

    def _group_mask(self, choice: torch.Tensor) -> torch.Tensor:
        """Zero the scores outside the best ``topk_group`` of ``n_group`` expert groups."""
        grouped = choice.reshape(1, -1, self.n_group, choice.shape[-1] // self.n_group)   # [1, T, G, E/G]
        if self.method is TopkMethod.NOAUX_TC:
            group_score = torch.topk(grouped, 2, dim=-1)[0].sum(dim=-1)                  # [1, T, G]
        else:
            group_score = grouped.max(dim=-1).values
        best = torch.topk(group_score, self.topk_group, dim=-1)[1]                       # [1, T, topk_group]
        keep = torch.zeros_like(group_score).scatter(-1, best, 1.0)
        mask = keep[..., None].expand_as(grouped).reshape(choice.shape)
        return choice.masked_fill(mask == 0, 0.0)

    def forward(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = normed @ self.w_router                                   # [1, T, E]
        scores = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
        choice = scores + self.b_score if self.b_score is not None else scores
        if self.method is not TopkMethod.GREEDY:
            choice = self._group_mask(choice)
        weights, ids = torch.topk(choice, self.top_k, dim=-1)            # [1, T, A]
        if self.b_score is not None:
            weights = torch.gather(scores, -1, ids)                       # unbiased scores of the chosen
        if self.norm_topk_prob:
            denom = weights.sum(dim=-1, keepdim=True)
            weights = weights / (denom + 1e-20 if self.sigmoid else denom)
        if self.scale != 1.0:
            weights = weights * self.scale
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

    def _rotate_half(self, x: torch.Tensor) -> torch.Tensor:
        half = self.d // 2                       # a constant: no shape arithmetic in the graph
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, hidden, position_ids, past_key, past_value):
        # Reshapes use -1 instead of T so the graph needs no shape arithmetic per call.
        x = rms_norm(hidden, self.w_input_norm, self.eps)
        q, k, v = x @ self.w_q, x @ self.w_k, x @ self.w_v              # [1, T, NH*D] ...
        if self.b_q is not None:
            q, k, v = q + self.b_q, k + self.b_k, v + self.b_v
        if self.qk_norm is QKNorm.FULL:
            q, k = rms_norm(q, self.w_q_norm, self.eps), rms_norm(k, self.w_k_norm, self.eps)
        if self.clip is not None:
            q, k, v = (z.clamp(-self.clip, self.clip) for z in (q, k, v))
        q = q.reshape(1, -1, self.nh, self.d)
        k = k.reshape(1, -1, self.kv, self.d)
        if self.qk_norm is QKNorm.PER_HEAD:
            q, k = rms_norm(q, self.w_q_norm, self.eps), rms_norm(k, self.w_k_norm, self.eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                    # [1, NH, T, D], [1, KV, T, D]
        v = v.reshape(1, -1, self.kv, self.d).transpose(1, 2)
        freqs = position_ids.to(torch.float32)[:, :, None] * self.inv_freq[None, None, :]   # [1, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]                 # [1, 1, T, D]
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        key = torch.cat((past_key, k), dim=2)                            # [1, KV, S, D], S = P + T
        value = torch.cat((past_value, v), dim=2)
        rep = self.nh // self.kv
        # grouped-query attention without copying K/V: the rep query heads of a KV head
        # become rows of one matrix [1, KV, rep*T, D]
        qg = q.reshape(1, self.kv, -1, self.d)
        scores = (qg @ key.transpose(2, 3)) * (self.d ** -0.5)           # [1, KV, rep*T, S]
        k_pos = torch.arange(key.shape[2])[None, :]                      # [1, S]
        q_pos = position_ids[0][:, None]                                 # [T, 1]: absolute positions
        blocked = k_pos > q_pos
        if self.window is not None:
            blocked = blocked | (k_pos <= q_pos - self.window)
        scores = scores.masked_fill(blocked.repeat(rep, 1), float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ value                     # [1, KV, rep*T, D]
        attn = attn.reshape(1, self.nh, -1, self.d).transpose(1, 2).reshape(1, -1, self.nh * self.d) @ self.w_o
        if self.b_o is not None:
            attn = attn + self.b_o
        out = hidden + attn
        return out, rms_norm(out, self.w_post_norm, self.eps), key, value


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2) with a compressed KV cache.

    The cache holds, per position, the normalised latent c [1, 1, P, R] (past_key) and the
    rotary key k_pe [1, 1, P, Dr] (past_value); per-head keys and values are expanded
    from the latent with kv_b at every call. RoPE rotates interleaved pairs.
    Legend: R kv_lora_rank, Dn nope head dim, Dr rope head dim, Dv value head dim.
    """

    def __init__(self, w: "MLAWeights", dims: ModelDims, spec: AttentionSpec, mla: "MLASpec"):
        super().__init__()
        self.interleaved = mla.rope_interleaved
        self.nh, self.eps = dims.num_heads, spec.rms_eps
        self.m = mla
        self.w_input_norm = _param(w.input_norm)
        self.w_post_norm = _param(w.post_norm)
        self.w_q = _param(w.q.t()) if w.q is not None else None
        self.w_q_a = _param(w.q_a.t()) if w.q_a is not None else None
        self.w_q_a_norm = _param(w.q_a_norm) if w.q_a_norm is not None else None
        self.w_q_b = _param(w.q_b.t()) if w.q_b is not None else None
        self.w_kv_a = _param(w.kv_a.t())                    # [H, R + Dr]
        self.w_kv_a_norm = _param(w.kv_a_norm)
        self.w_kv_b = _param(w.kv_b.t())                    # [R, NH * (Dn + Dv)]
        self.w_o = _param(w.o.t())
        d = mla.rope_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate pairs: interleaved (x0, x1), (x2, x3) ... or halves (x_i, x_{i+D/2}).
        q and k get the same layout, so their dot products are what the model computes."""
        if self.interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
        else:
            half = x.shape[-1] // 2
            a, b = x[..., :half], x[..., half:]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)

    def forward(self, hidden, position_ids, past_key, past_value):
        m, t = self.m, hidden.shape[1]
        x = rms_norm(hidden, self.w_input_norm, self.eps)
        if self.w_q is not None:
            q = x @ self.w_q
        else:
            q = rms_norm(x @ self.w_q_a, self.w_q_a_norm, self.eps) @ self.w_q_b
        q = q.view(1, t, self.nh, m.nope_dim + m.rope_dim).transpose(1, 2)            # [1, NH, T, Dn+Dr]
        q_nope, q_pe = q[..., : m.nope_dim], q[..., m.nope_dim:]
        kv = x @ self.w_kv_a                                                           # [1, T, R + Dr]
        latent = rms_norm(kv[..., : m.kv_lora_rank], self.w_kv_a_norm, self.eps)[:, None]   # [1, 1, T, R]
        k_pe = kv[..., m.kv_lora_rank:][:, None]                                       # [1, 1, T, Dr]
        freqs = position_ids.to(torch.float32)[:, :, None] * self.inv_freq[None, None, :]   # [1, T, Dr/2]
        cos, sin = freqs.cos()[:, None], freqs.sin()[:, None]
        q_pe, k_pe = self._rope(q_pe, cos, sin), self._rope(k_pe, cos, sin)
        latent_all = torch.cat((past_key, latent), dim=2)                              # [1, 1, S, R]
        k_pe_all = torch.cat((past_value, k_pe), dim=2)                                # [1, 1, S, Dr]
        s = latent_all.shape[2]
        kvb = (latent_all[:, 0] @ self.w_kv_b).view(1, s, self.nh, m.nope_dim + m.v_dim).transpose(1, 2)
        k_nope, v = kvb[..., : m.nope_dim], kvb[..., m.nope_dim:]                     # [1, NH, S, Dn], [.., Dv]
        k = torch.cat((k_nope, k_pe_all.expand(1, self.nh, s, m.rope_dim)), dim=-1)
        qq = torch.cat((q_nope, q_pe), dim=-1)
        scores = (qq @ k.transpose(2, 3)) * ((m.nope_dim + m.rope_dim) ** -0.5)        # [1, NH, T, S]
        q_pos = torch.arange(t)[:, None] + (s - t)
        scores = scores.masked_fill(torch.arange(s)[None, :] > q_pos, float("-inf"))
        attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(1, t, self.nh * m.v_dim) @ self.w_o
        out = hidden + attn
        return out, rms_norm(out, self.w_post_norm, self.eps), latent_all, k_pe_all
