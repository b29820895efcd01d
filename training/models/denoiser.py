"""The denoiser: 3D U-Net + memory structure (paper Sec. 5, Fig. 5) + optional compression (App. G).

    denoiser(x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None) -> v (B,T,C,H,W)
    cache = denoiser.encode_memory(mem_x, mem_actions, mem_mask)          # once per memory (sampler: per AR step)
    denoiser(x, noise_levels, actions, memory_cache=cache)               # same v, memory not recomputed

Memory is first normalised to `memory_length` frames (older ones dropped, missing ones left-padded and masked),
masked frames are zeroed and their actions replaced by a learned start token, then optionally compressed to
`budget` frame-like entries (training/models/compression.py). The structures then read (frames, action vectors,
mask):
- prepend: memory frames join the time axis in front of the current frames at noise level 0; their action
  vectors drive the adaptive GroupNorm scale/shift of every ResNet block ("actions map past frames into the
  current feature space via layer norm"); temporal attention is causal over [memory, current] and skips masked
  frames; only the current T frames are returned (the loss sees only them).
- concat: the memory frames first pass transformer blocks in which their actions modulate them (App. F; the
  `modulated` compressor, keeping all frames when compression is none); then each frame, its action vector (as a
  feature map) and its mask bit are stacked on the channel axis and merged by convolution into one feature map
  that is concatenated to every current frame's input.
- cross_attn: memory frames become patch tokens plus one action token per frame (and an always-valid null
  token); every U-Net basic block adds cross attention from the current features to them.
Action conditioning of current frame t: embedding of actions[t] plus embedding of the action that led to it,
actions[t-1] (for t = 0 the last valid memory action, else the start token; memory 'none' always uses start).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from .compression import Compressor
from .layers import CrossAttention, MemoryKV, sinusoidal
from .unet3d import UNet3D

if TYPE_CHECKING:  # the package imports this module (build_denoiser); at run time the import would go both ways
    from . import ModelConfig


@dataclasses.dataclass
class MemoryCache:
    """What the current frames read from one memory (`Denoiser.encode_memory`). It does not depend on the current
    frames, their noise levels or actions, so every sub-step of an AR step (every call with the same memory) reuses it.

    memory: the structure it was encoded for. prev_action (B,D): the action vector that led to current frame 0.
    attention: prepend: keys/values of the memory frames at every temporal attention (their features cannot
    depend on the later current frames: temporal attention is causal, every other layer acts per frame);
    cross_attn: keys/values of the memory tokens at every cross attention; else None.
    token_valid (B,L): cross_attn token validity. feature (B,Cm,H,W): concat's merged memory feature map.
    Compression, when configured, has already run: all of the above come from the compressed memory."""

    memory: str
    prev_action: torch.Tensor
    attention: MemoryKV | None = None
    token_valid: torch.Tensor | None = None
    feature: torch.Tensor | None = None


class Denoiser(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        a = cfg.arch
        ch = a["channels"]
        self.emb_dim = emb = 4 * ch
        self.level_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.action_embed = nn.Embedding(cfg.num_actions + 1, emb)  # last id = start token (no previous action)
        self.act_cur = nn.Linear(emb, emb)
        self.act_prev = nn.Linear(emb, emb)
        self.compressor = None
        if cfg.memory != "none" and cfg.compression != "none":
            self.compressor = Compressor(cfg.compression, cfg.in_channels, cfg.resolution, a["patch"],
                                         a["token_dim"], a["depth"], a["head_dim"], emb, cfg.budget)
        elif cfg.memory == "concat":  # App. F: transformer blocks merge frames with actions before the convolution;
            # uncompressed, that is the modulated network (App. G's choice for concat) keeping every frame
            self.compressor = Compressor("modulated", cfg.in_channels, cfg.resolution, a["patch"], a["token_dim"],
                                         a["depth"], a["head_dim"], emb, cfg.memory_length)
        k = cfg.memory_frames
        cin, token_dim = cfg.in_channels, None
        if cfg.memory == "concat":
            self.mem_act_channels = 4
            self.mem_act = nn.Linear(emb, self.mem_act_channels)
            per_frame = cfg.in_channels + self.mem_act_channels + 1  # frame, action map, mask bit
            mc = a["mem_channels"]
            self.mem_merge = nn.Sequential(nn.Conv2d(k * per_frame, mc, 3, padding=1), nn.SiLU(),
                                           nn.Conv2d(mc, mc, 3, padding=1))
            cin += mc
        elif cfg.memory == "cross_attn":
            token_dim = a["token_dim"]
            p = a["patch"]
            self.num_patches = (cfg.resolution // p) ** 2
            self.tok_frame = nn.Linear(cfg.in_channels * p * p, token_dim)
            self.tok_pos = nn.Parameter(torch.randn(self.num_patches + 1, token_dim) * 0.02)  # + action slot
            self.tok_act = nn.Linear(emb, token_dim)
            self.tok_time = nn.Linear(token_dim, token_dim)
            self.tok_null = nn.Parameter(torch.randn(1, 1, token_dim) * 0.02)
        self.unet = UNet3D(cin, cfg.in_channels, ch, a["mult"], a["res_blocks"], a["spatial_levels"], emb,
                           a["head_dim"], token_dim)

    # ----------------------------------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, noise_levels: torch.Tensor, actions: torch.Tensor, mem_x: torch.Tensor | None,
               mem_actions: torch.Tensor | None, mem_mask: torch.Tensor | None) -> None:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[2] != cfg.in_channels or x.shape[3] != cfg.resolution or x.shape[4] != cfg.resolution:
            raise ValueError(f"x: expected (B,T,{cfg.in_channels},{cfg.resolution},{cfg.resolution}) "
                             f"(ModelConfig in_channels/resolution), got {tuple(x.shape)}")
        if tuple(noise_levels.shape) != tuple(x.shape[:2]) or tuple(actions.shape) != tuple(x.shape[:2]):
            raise ValueError(f"noise_levels {tuple(noise_levels.shape)} and actions {tuple(actions.shape)} must both "
                             f"be (B,T) = {tuple(x.shape[:2])}")
        if mem_x is not None:
            if mem_x.ndim != 5 or mem_x.shape[0] != x.shape[0] or mem_x.shape[2:] != x.shape[2:]:
                raise ValueError(f"mem_x: expected (B,M,C,H,W) matching x {tuple(x.shape)}, got {tuple(mem_x.shape)}")
            if mem_actions is None or tuple(mem_actions.shape) != tuple(mem_x.shape[:2]):
                raise ValueError(f"mem_actions: expected (B,M) = {tuple(mem_x.shape[:2])}, got "
                                 f"{None if mem_actions is None else tuple(mem_actions.shape)}")
            if mem_mask is not None and tuple(mem_mask.shape) != tuple(mem_x.shape[:2]):
                raise ValueError(f"mem_mask: expected (B,M) = {tuple(mem_x.shape[:2])}, got {tuple(mem_mask.shape)}")

    def _memory(self, b: int, mem_x: torch.Tensor | None, mem_actions: torch.Tensor | None,
                mem_mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> frames (B,K,C,H,W), action vectors (B,K,D), valid (B,K): normalised to memory_length, compressed."""
        cfg, L = self.cfg, self.cfg.memory_length
        dev = like.device
        if mem_x is None:
            mem_x = like.new_zeros(b, 0, *like.shape[2:])
            mem_actions = torch.zeros(b, 0, dtype=torch.long, device=dev)
        if mem_mask is None:
            mem_mask = torch.ones(mem_x.shape[:2], dtype=torch.bool, device=dev)
        mem_x, mem_actions, mem_mask = mem_x[:, -L:], mem_actions[:, -L:], mem_mask[:, -L:].bool()
        pad = L - mem_x.shape[1]
        if pad > 0:  # short history: left-pad with masked frames
            mem_x = torch.cat([mem_x.new_zeros(b, pad, *mem_x.shape[2:]), mem_x], 1)
            mem_actions = torch.cat([mem_actions.new_zeros(b, pad), mem_actions], 1)
            mem_mask = torch.cat([mem_mask.new_zeros(b, pad), mem_mask], 1)
        start = torch.full_like(mem_actions, cfg.num_actions)
        act = self.action_embed(torch.where(mem_mask, mem_actions.clamp(0, cfg.num_actions), start))
        mem_x = mem_x * mem_mask[:, :, None, None, None].to(mem_x.dtype)  # masked content never enters
        if self.compressor is not None:
            mem_x, act, mem_mask = self.compressor(mem_x, act, mem_mask)
            act = torch.where(mem_mask[:, :, None], act, self.action_embed.weight[cfg.num_actions].to(act.dtype))
        return mem_x, act, mem_mask

    def _emb(self, levels: torch.Tensor, act: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning (B,S,D): noise-level embedding + current and previous action vectors."""
        lvl = self.level_mlp(sinusoidal(levels, self.cfg.arch["channels"]).to(act.dtype))
        return lvl + self.act_cur(act) + self.act_prev(prev)

    def _tokens(self, mem_x: torch.Tensor, act: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cross_attn memory tokens (B, K*(P+1)+1, Dt) and their validity."""
        b, k, c, h, w = mem_x.shape
        p = self.cfg.arch["patch"]
        patches = mem_x.reshape(b, k, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, k, -1, c * p * p)
        tok = torch.cat([self.tok_frame(patches), self.tok_act(act)[:, :, None]], 2) + self.tok_pos  # (B,K,P+1,Dt)
        time = sinusoidal(torch.arange(k, device=mem_x.device) / max(k, 1), tok.shape[-1]).to(tok.dtype)
        tok = (tok + self.tok_time(time)[None, :, None]).reshape(b, -1, tok.shape[-1])
        tv = valid[:, :, None].expand(b, k, self.num_patches + 1).reshape(b, -1)
        tok = torch.cat([self.tok_null.expand(b, 1, -1).to(tok.dtype), tok], 1)
        return tok, torch.cat([torch.ones(b, 1, dtype=torch.bool, device=tv.device), tv], 1)

    # ----------------------------------------------------------------------------------------------------------
    def encode_memory(self, mem_x: torch.Tensor, mem_actions: torch.Tensor,
                      mem_mask: torch.Tensor | None = None) -> MemoryCache:
        """Everything the current frames read from this memory, computed once (see `MemoryCache`).

        mem_x (B,M,C,H,W) clean frames, mem_actions (B,M), mem_mask (B,M) bool (None = all valid). The result
        serves any x, noise levels and actions of the same B clips: `forward(x, levels, actions,
        memory_cache=cache)` equals `forward(x, levels, actions, mem_x, mem_actions, mem_mask)` (up to float
        rounding; tested)."""
        cfg = self.cfg
        frame = (cfg.in_channels, cfg.resolution, cfg.resolution)
        if mem_x is None or mem_x.ndim != 5 or tuple(mem_x.shape[2:]) != frame:
            raise ValueError(f"encode_memory: mem_x must be (B,M,{','.join(map(str, frame))}) (ModelConfig "
                             f"in_channels/resolution), got {None if mem_x is None else tuple(mem_x.shape)}")
        bm = tuple(mem_x.shape[:2])
        if mem_actions is None or tuple(mem_actions.shape) != bm:
            raise ValueError(f"encode_memory: mem_actions must be (B,M) = {bm}, got "
                             f"{None if mem_actions is None else tuple(mem_actions.shape)}")
        if mem_mask is not None and tuple(mem_mask.shape) != bm:
            raise ValueError(f"encode_memory: mem_mask must be (B,M) = {bm}, got {tuple(mem_mask.shape)}")
        dtype = self.action_embed.weight.dtype  # the uncached path computes in x's dtype, which matches it
        like = mem_x.new_empty(mem_x.shape[0], 0, *frame, dtype=dtype)  # stands for a current window of 0 frames
        return self._encode(mem_x.to(dtype), mem_actions, mem_mask, like)

    def _encode(self, mem_x: torch.Tensor | None, mem_actions: torch.Tensor | None, mem_mask: torch.Tensor | None,
                like: torch.Tensor) -> MemoryCache:
        cfg = self.cfg
        b = like.shape[0]
        start = self.action_embed.weight[cfg.num_actions].expand(b, -1)
        if cfg.memory == "none":
            return MemoryCache("none", start)
        mx, ma, mv = self._memory(b, mem_x, mem_actions, mem_mask, like)
        mx = mx.to(like.dtype)
        prev_action = ma[:, -1]  # masked slots already carry the start token's vector
        if cfg.memory == "prepend":
            # Memory slots masked in every clip are never attended: drop them (rotary attention depends on position
            # differences only, so the remaining frames see the same offsets; all-padding memory costs nothing).
            seen = mv.any(0)  # (K,)
            first = 0 if mv.is_meta else (int(seen.long().argmax()) if bool(seen.any()) else mv.shape[1])
            mx, ma, mv = mx[:, first:], ma[:, first:], mv[:, first:]
            kv = MemoryKV(past_valid=mv, recording=True)
            if mx.shape[1]:
                levels = torch.zeros(mv.shape, device=mv.device)
                prev = torch.cat([start[:, None], ma[:, :-1]], 1)
                self.unet(mx, self._emb(levels, ma, prev), key_valid=mv, memory=kv)
            kv.recording = False
            return MemoryCache("prepend", prev_action, attention=kv)
        if cfg.memory == "concat":
            hh, ww = mx.shape[-2:]
            amap = self.mem_act(ma)[:, :, :, None, None].expand(-1, -1, -1, hh, ww)  # (B,K,Ca,H,W)
            bits = mv[:, :, None, None, None].to(mx.dtype).expand(-1, -1, 1, hh, ww)
            stack = torch.cat([mx, amap.to(mx.dtype), bits], 2).flatten(1, 2)  # (B,K*(C+Ca+1),H,W)
            return MemoryCache("concat", prev_action, feature=self.mem_merge(stack))  # (B,Cm,H,W)
        tokens, tvalid = self._tokens(mx, ma, mv)
        kv = MemoryKV({m: m.keys_values(tokens) for m in self.unet.modules() if isinstance(m, CrossAttention)})
        return MemoryCache("cross_attn", prev_action, attention=kv, token_valid=tvalid)

    def forward(self, x: torch.Tensor, noise_levels: torch.Tensor, actions: torch.Tensor,
                mem_x: torch.Tensor | None = None, mem_actions: torch.Tensor | None = None,
                mem_mask: torch.Tensor | None = None, memory_cache: MemoryCache | None = None) -> torch.Tensor:
        """x (B,T,C,H,W) noisy frames, noise_levels (B,T) in [0,1], actions (B,T) int64, mem_x (B,M,C,H,W) clean,
        mem_actions (B,M), mem_mask (B,M) bool -> v-prediction (B,T,C,H,W). Instead of mem_*, `memory_cache`
        from `encode_memory` (reused across calls that share the memory)."""
        self._check(x, noise_levels, actions, mem_x, mem_actions, mem_mask)
        cfg = self.cfg
        if memory_cache is None:
            if cfg.memory == "prepend":
                return self._forward_prepend(x, noise_levels, actions, mem_x, mem_actions, mem_mask)
            memory_cache = self._encode(mem_x, mem_actions, mem_mask, x)  # the same work, done per call
        elif mem_x is not None:
            raise ValueError("Denoiser.forward: pass the memory either as mem_x/mem_actions/mem_mask or as "
                             "memory_cache, not both")
        elif memory_cache.memory != cfg.memory or memory_cache.prev_action.shape[0] != x.shape[0]:
            raise ValueError(f"memory_cache was encoded for memory={memory_cache.memory!r} and "
                             f"{memory_cache.prev_action.shape[0]} clips; this denoiser has memory={cfg.memory!r} "
                             f"and x has {x.shape[0]} clips (encode it with this denoiser and batch)")
        cur = self.action_embed(actions.clamp(0, cfg.num_actions - 1))  # (B,T,D)
        prev = torch.cat([memory_cache.prev_action[:, None].to(cur.dtype), cur[:, :-1]], 1)
        emb = self._emb(noise_levels, cur, prev)
        if cfg.memory == "concat":
            feat = memory_cache.feature.to(x.dtype)[:, None].expand(-1, x.shape[1], -1, -1, -1)
            return self.unet(torch.cat([x, feat], 2), emb)  # the merged memory joins every current frame
        return self.unet(x, emb, token_valid=memory_cache.token_valid, memory=memory_cache.attention)

    def _forward_prepend(self, x: torch.Tensor, noise_levels: torch.Tensor, actions: torch.Tensor,
                         mem_x: torch.Tensor | None, mem_actions: torch.Tensor | None,
                         mem_mask: torch.Tensor | None) -> torch.Tensor:
        """Uncached prepend: one U-Net pass over [memory, current] (what training runs; reference for the cache)."""
        cfg = self.cfg
        b, t = x.shape[:2]
        start = self.action_embed.weight[cfg.num_actions].expand(b, 1, -1)
        cur = self.action_embed(actions.clamp(0, cfg.num_actions - 1))  # (B,T,D)
        mx, ma, mv = self._memory(b, mem_x, mem_actions, mem_mask, x)
        k = mx.shape[1]
        seq_x = torch.cat([mx.to(x.dtype), x], 1)  # (B,K+T,C,H,W)
        levels = torch.cat([noise_levels.new_zeros(b, k), noise_levels], 1)
        act = torch.cat([ma, cur], 1)
        prev = torch.cat([start, act[:, :-1]], 1)
        valid = torch.cat([mv, torch.ones(b, t, dtype=torch.bool, device=x.device)], 1)
        return self.unet(seq_x, self._emb(levels, act, prev), key_valid=valid)[:, k:]
