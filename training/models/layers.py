"""Building blocks of the 3D U-Net denoiser (pure torch, no Ray).

Every layer here is causal in time by construction: convolutions, norms and spatial attention act on one frame at
a time; only `TemporalAttention` mixes frames, under a causal mask (frame t sees frames <= t). Attention goes
through `attention()`, which chunks the batch of sequences so that no fused kernel sees more than `MAX_ROWS`
sequences (the CUDA grid limit of 65,535 rows: a temporal attention over B*H*W = 32*64*64 pixels crashed without it).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 32768  # sequences per fused-attention call (< 65,535 CUDA grid rows)


# ---------------------------------------------------------------------------------------------------------------
# attention core
# ---------------------------------------------------------------------------------------------------------------

def _sdpa_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                  is_causal: bool, max_rows: int) -> torch.Tensor:
    """F.scaled_dot_product_attention over q (N,h,L,d), k/v (N,h,S,d) in chunks of <= max_rows along N."""
    n = q.shape[0]
    if n <= max_rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    outs = [F.scaled_dot_product_attention(q[i:i + max_rows], k[i:i + max_rows], v[i:i + max_rows],
                                           attn_mask=attn_mask, is_causal=is_causal)
            for i in range(0, n, max_rows)]
    return torch.cat(outs, 0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              key_valid: torch.Tensor | None = None, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """Multi-head attention; returns (N,h,L,d).

    q (N,h,L,d), k/v (N,h,S,d). `causal`: query i sees keys <= S - L + i (queries are the last L of the key
    sequence, as when cached memory keys precede the current frames). `key_valid` (G,S) bool marks keys that may
    be attended, for N = G*R sequences grouped by their leading index (e.g. G = batch, R = pixels). Invalid keys get
    no weight; a query whose every key is invalid attends to itself (its output is then discarded or masked by the
    caller), so no NaN appears.
    """
    L, s = q.shape[2], k.shape[2]
    if key_valid is None or key_valid.is_meta or bool(key_valid.all()):  # meta: FLOP counting, no values
        if causal and 1 < L != s:  # SDPA's is_causal aligns query 0 with key 0; ours aligns the ends
            mask = torch.ones(L, s, dtype=torch.bool, device=q.device).tril(s - L)
            return _sdpa_chunked(q, k, v, mask, False, max_rows)
        return _sdpa_chunked(q, k, v, None, causal and L > 1, max_rows)
    g = key_valid.shape[0]
    n, h, _, d = q.shape
    r = n // g
    allowed_base = torch.ones(L, s, dtype=torch.bool, device=q.device)
    eye = torch.zeros(L, s, dtype=torch.bool, device=q.device)
    if causal:  # query i (aligned to the end of the key sequence) sees keys <= i; "itself" is key s - L + i
        allowed_base = allowed_base.tril(s - L)
        eye = allowed_base & ~allowed_base.tril(s - L - 1)
    elif L == s:
        eye = torch.eye(L, dtype=torch.bool, device=q.device)
    qg, kg, vg = (t.reshape(g, r, h, t.shape[2], d) for t in (q, k, v))
    patterns, which = torch.unique(key_valid, dim=0, return_inverse=True)  # few distinct paddings per batch
    out = q.new_empty(g, r, h, L, d)
    for u in range(patterns.shape[0]):  # one (L,S) mask per pattern, broadcast (no (N,L,S) mask is materialised)
        mask = ((allowed_base & patterns[u][None, :]) | eye)[None, None]
        if patterns.shape[0] == 1:
            out = _sdpa_chunked(q, k, v, mask, False, max_rows).view(g, r, h, L, d)
            break
        idx = (which == u).nonzero().squeeze(1)
        sub = [t.index_select(0, idx).flatten(0, 1) for t in (qg, kg, vg)]
        out[idx] = _sdpa_chunked(*sub, mask, False, max_rows).view(len(idx), r, h, L, d)
    return out.reshape(n, h, L, d)


def rope(x: torch.Tensor, positions: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Rotary position embedding of x (..., d) at integer positions (S,) along axis `dim` (default: x is
    (..., S, d)); relative time offsets in attention. Rotating in x's memory order (e.g. `dim=1` on a Linear's
    (N,S,...,d) output rather than on a permuted (N,h,S,d) view) keeps the elementwise work streaming."""
    d = x.shape[-1]
    half = d // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = positions.to(torch.float32)[:, None] * freqs[None, :]  # (S, d/2)
    shape = [1] * x.ndim
    shape[dim], shape[-1] = len(positions), half
    cos, sin = ang.cos().to(x.dtype).view(shape), ang.sin().to(x.dtype).view(shape)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return torch.cat([out, x[..., 2 * half:]], -1) if d % 2 else out


def sinusoidal(values: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (..., dim) of real values (...), e.g. noise levels k/K in [0,1] scaled to [0,1000]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    ang = values.to(torch.float32)[..., None] * scale * freqs
    return torch.cat([ang.sin(), ang.cos()], -1)


def num_heads(channels: int, head_dim: int) -> int:
    """Heads of about `head_dim` width that divide `channels` evenly."""
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


def num_groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


# ---------------------------------------------------------------------------------------------------------------
# layers on (B,S,C,H,W) sequences of frames
# ---------------------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """ResNet block per frame: GN-SiLU-conv, then adaptive GroupNorm (scale/shift from the frame's embedding of noise
    level and actions), SiLU, conv, plus a skip. Input (B*S,Cin,H,W), emb (B*S,D) -> (B*S,Cout,H,W)."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(num_groups(cout), cout, affine=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).chunk(2, -1)  # (B*S, Cout) each
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class SpatialAttention(nn.Module):
    """Self-attention over the H*W positions of each frame. x (B*S,C,H,W) -> same."""

    def __init__(self, channels: int, head_dim: int) -> None:
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(t).view(n, hh * ww, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = attention(q, k, v).transpose(1, 2).reshape(n, hh * ww, c)
        return x + self.proj(o).transpose(1, 2).reshape(n, c, hh, ww)


@dataclasses.dataclass
class MemoryKV:
    """Keys and values that the current frames' attention layers read from the memory, computed once per memory
    (`Denoiser.encode_memory`) and reused by every denoiser call that sees the same memory.

    kv: attention layer -> (k, v). TemporalAttention: the K memory frames that precede the current frames on the
    time axis (prepend), (B*H*W, heads, K, d), rotary positions 0..K-1 already applied. CrossAttention: the memory
    tokens, (B, heads, L, d).
    past_valid: (B,K) bool, which memory frames are attendable keys (prepend), else None (temporal attention then
    has no past). recording: True during the memory frames' own pass, which fills `kv` for temporal attention."""

    kv: dict = dataclasses.field(default_factory=dict)
    past_valid: torch.Tensor | None = None
    recording: bool = False
    last: nn.Module | None = None  # while recording: the last temporal attention, whose output nothing reads

    def extend(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K cached keys/values of temporal attention `layer` followed by the current ones, k/v (N,h,S,d) ->
        (N,h,K+S,d) each. Without autograd the first call's result is kept as a buffer whose last S slots later
        calls overwrite, so a call copies its own S frames rather than all K + S (measured: 17% of a call at
        K = 112, tiny preset); with autograd it concatenates afresh and the cache is never written."""
        mk, mv = self.kv[layer]  # (N,h,K,d), or a buffer (N,h,K+S',d) from an earlier call
        K, s = self.past_valid.shape[1], k.shape[2]
        if torch.is_grad_enabled() or mk.shape[2] != K + s:
            mk, mv = torch.cat([mk[:, :, :K], k], 2), torch.cat([mv[:, :, :K], v], 2)
            if not torch.is_grad_enabled():
                self.kv[layer] = (mk, mv)
            return mk, mv
        mk[:, :, K:] = k
        mv[:, :, K:] = v
        return mk, mv


class TemporalAttention(nn.Module):
    """Causal self-attention over the S frames at each pixel, with rotary time positions.

    x (B,S,C,H,W), key_valid (B,S) bool or None -> (B,S,C,H,W). Frame t attends to frames <= t whose key_valid is
    True, so masked memory frames and later frames never reach it. With `memory` (MemoryKV with past_valid), the
    K cached memory frames come first on the time axis: x's frames sit at positions K..K+S-1 and attend to the
    valid cached frames too, exactly as if memory and x were one sequence (causality makes the memory frames'
    keys/values independent of x). While `memory.recording`, x *is* the memory and its keys/values are stored."""

    def __init__(self, channels: int, head_dim: int) -> None:
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.max_rows = MAX_ROWS

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None,
                memory: MemoryKV | None = None) -> torch.Tensor:
        b, s, c, hh, ww = x.shape
        t = x.permute(0, 3, 4, 1, 2).reshape(b * hh * ww, s, c)  # (B*H*W, S, C)
        qkv = self.qkv(self.norm(t)).view(b * hh * ww, s, 3, self.heads, c // self.heads)  # (B*H*W, S, 3, h, d)
        past = 0 if memory is None or memory.past_valid is None or memory.recording else memory.past_valid.shape[1]
        qk = rope(qkv[:, :, :2], torch.arange(past, past + s, device=x.device), dim=1)  # q and k together
        (q, k), v = qk.permute(2, 0, 3, 1, 4), qkv[:, :, 2].transpose(1, 2)  # (B*H*W, h, S, d) each
        if past:  # keys/values of the cached memory frames first: (B*H*W, h, K+S, d)
            k, v = memory.extend(self, k, v)
            own = torch.ones(b, s, dtype=torch.bool, device=x.device) if key_valid is None else key_valid.bool()
            key_valid = torch.cat([memory.past_valid, own], 1)
        elif memory is not None and memory.recording:
            memory.kv[self] = (k.contiguous(), v.contiguous())  # views would keep this layer's q (and k, v) alive
            if memory.last is self:
                return x
        o = attention(q, k, v, causal=True, key_valid=key_valid, max_rows=self.max_rows)  # (B*H*W, h, S, d)
        o = self.proj(o.transpose(1, 2).reshape(b * hh * ww, s, c))
        return x + o.view(b, hh, ww, s, c).permute(0, 3, 4, 1, 2)


class CrossAttention(nn.Module):
    """Every pixel of every current frame attends to memory tokens (paper Fig. 5, cross attention).

    x (B,S,C,H,W), tokens (B,L,Dm), token_valid (B,L) -> (B,S,C,H,W). Queries of all frames share one call (each
    query is independent, so this is causal in time). With `memory`, the tokens' keys/values come from
    `memory.kv[self]` (tokens is then unused)."""

    def __init__(self, channels: int, token_dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(token_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory tokens (B,L,Dm) -> keys, values (B, h, L, d) each."""
        b, n = tokens.shape[:2]
        return self.kv(tokens).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None, token_valid: torch.Tensor | None,
                memory: MemoryKV | None = None) -> torch.Tensor:
        b, s, c, hh, ww = x.shape
        t = self.norm(x.flatten(0, 1)).view(b, s, c, hh * ww).permute(0, 1, 3, 2).reshape(b, s * hh * ww, c)
        q = self.q(t).view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # (B, h, S*HW, d)
        k, v = memory.kv[self] if memory is not None else self.keys_values(tokens)
        o = attention(q, k, v, key_valid=token_valid).transpose(1, 2).reshape(b, s, hh * ww, c)
        o = self.proj(o).permute(0, 1, 3, 2).reshape(b, s, c, hh, ww)
        return x + o
