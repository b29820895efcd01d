"""Building blocks of the 3D U-Net denoiser (pure torch, no Ray).

Every layer here is causal in time by construction: convolutions, norms and spatial attention act on one frame at
a time; only `TemporalAttention` mixes frames, under a causal mask (frame t sees frames <= t). Attention goes
through `attention()`, which chunks the batch of sequences so that no fused kernel sees more than `MAX_ROWS`
sequences (the CUDA grid limit of 65,535 rows: a temporal attention over B*H*W = 32*64*64 pixels crashed without it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 32768  # sequences per fused-attention call (< 65,535 CUDA grid rows)


# ---------------------------------------------------------------------------------------------------------------
# attention core
# ---------------------------------------------------------------------------------------------------------------

def _sdpa_chunked(q, k, v, attn_mask, is_causal: bool, max_rows: int):
    """F.scaled_dot_product_attention over q (N,h,L,d), k/v (N,h,S,d) in chunks of <= max_rows along N."""
    n = q.shape[0]
    if n <= max_rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    outs = [F.scaled_dot_product_attention(q[i:i + max_rows], k[i:i + max_rows], v[i:i + max_rows],
                                           attn_mask=attn_mask, is_causal=is_causal)
            for i in range(0, n, max_rows)]
    return torch.cat(outs, 0)


def attention(q, k, v, *, causal: bool = False, key_valid: torch.Tensor | None = None,
              max_rows: int = MAX_ROWS) -> torch.Tensor:
    """Multi-head attention; returns (N,h,L,d).

    q (N,h,L,d), k/v (N,h,S,d). `key_valid` (G,S) bool marks keys that may be attended, for N = G*R sequences
    grouped by their leading index (e.g. G = batch, R = pixels). Invalid keys get no weight; a query whose every
    key is invalid attends to itself (its output is then discarded or masked by the caller), so no NaN appears.
    """
    if key_valid is None or key_valid.is_meta or bool(key_valid.all()):  # meta: FLOP counting, no values
        return _sdpa_chunked(q, k, v, None, causal and q.shape[2] > 1, max_rows)
    g, s = key_valid.shape
    n, h, L, d = q.shape
    r = n // g
    allowed_base = torch.ones(L, s, dtype=torch.bool, device=q.device)
    if causal:  # query i (aligned to the end of the key sequence) sees keys <= i
        allowed_base = torch.ones(L, s, dtype=torch.bool, device=q.device).tril(s - L)
    eye = torch.zeros(L, s, dtype=torch.bool, device=q.device)
    if L == s:
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


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (..., S, d) at integer positions (S,) (relative time offsets in attention)."""
    d = x.shape[-1]
    half = d // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = positions.to(torch.float32)[:, None] * freqs[None, :]  # (S, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
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

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(num_groups(cout), cout, affine=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).chunk(2, -1)  # (B*S, Cout) each
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class SpatialAttention(nn.Module):
    """Self-attention over the H*W positions of each frame. x (B*S,C,H,W) -> same."""

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        n, c, hh, ww = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(t).view(n, hh * ww, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = attention(q, k, v).transpose(1, 2).reshape(n, hh * ww, c)
        return x + self.proj(o).transpose(1, 2).reshape(n, c, hh, ww)


class TemporalAttention(nn.Module):
    """Causal self-attention over the S frames at each pixel, with rotary time positions.

    x (B,S,C,H,W), key_valid (B,S) bool or None -> (B,S,C,H,W). Frame t attends to frames <= t whose key_valid is
    True, so masked memory frames and later frames never reach it."""

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.max_rows = MAX_ROWS

    def forward(self, x, key_valid=None):
        b, s, c, hh, ww = x.shape
        t = x.permute(0, 3, 4, 1, 2).reshape(b * hh * ww, s, c)  # (B*H*W, S, C)
        q, k, v = self.qkv(self.norm(t)).view(b * hh * ww, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(s, device=x.device)
        q, k = rope(q, pos), rope(k, pos)
        o = attention(q, k, v, causal=True, key_valid=key_valid, max_rows=self.max_rows)  # (B*H*W, h, S, d)
        o = self.proj(o.transpose(1, 2).reshape(b * hh * ww, s, c))
        return x + o.view(b, hh, ww, s, c).permute(0, 3, 4, 1, 2)


class CrossAttention(nn.Module):
    """Every pixel of every current frame attends to memory tokens (paper Fig. 5, cross attention).

    x (B,S,C,H,W), tokens (B,L,Dm), token_valid (B,L) -> (B,S,C,H,W). Queries of all frames share one call (each
    query is independent, so this is causal in time)."""

    def __init__(self, channels: int, token_dim: int, head_dim: int):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(token_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, tokens, token_valid):
        b, s, c, hh, ww = x.shape
        t = self.norm(x.flatten(0, 1)).view(b, s, c, hh * ww).permute(0, 1, 3, 2).reshape(b, s * hh * ww, c)
        d = c // self.heads
        q = self.q(t).view(b, -1, self.heads, d).transpose(1, 2)  # (B, h, S*HW, d)
        k, v = self.kv(tokens).view(b, tokens.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        o = attention(q, k, v, key_valid=token_valid).transpose(1, 2).reshape(b, s, hh * ww, c)
        o = self.proj(o).permute(0, 1, 3, 2).reshape(b, s, c, hh, ww)
        return x + o
