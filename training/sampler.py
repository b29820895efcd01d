"""Meta-ARVDM sampler (paper Sec. 3, Algorithms 1-3): one sampler for outpainting, FIFO, diffusion forcing.

    from training.diffusion import Diffusion
    from training.schedules import fifo, outpainting
    from training.sampler import sample
    frames = sample(denoiser, Diffusion(1000), outpainting(w=16, steps=50), actions, memory_x, memory_actions,
                    memory_length=48, generator=torch.Generator(device).manual_seed(0))   # (B,N,C,H,W)

The denoiser is any callable `denoiser(x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None)`
returning the v-prediction (see docs/sampler.md and the interfaces). Pure torch, no Ray.

Stages.
1. Initialization (Alg. 2), only when w > Delta: i0 = w frames are drawn from pure noise and denoised jointly
   T -> 0 in `init_steps` DDIM steps (Eqn. 3.1), with the given memory as references when there is any; the
   first w - Delta of them are then noised back to their input levels L^I (forward process q).
2. Auto-regressive stage (Alg. 1 loop, Alg. 3 step): ceil(N/Delta) times, append Delta pure-noise frames to the
   w - Delta carried ones, denoise the window from L^I to L^O in `substeps` DDIM sub-steps (Eqn. 3.3; one
   denoiser call per sub-step for the whole window), emit the first Delta frames (now clean), carry the rest.
Reference frames R_i (the memory): `reference.indices(num_known)` over the clean frames known so far, ground
truth memory first then generated frames; default the last `memory_length` of them (`LastFrames`). They go to
the denoiser as mem_x (B,M,C,H,W), mem_actions (B,M), mem_mask (B,M), left-padded (mask False) while fewer
than M frames are known. Causality (Requirement 1) is checked at every AR step.
Memory cache: the references are fixed for a whole AR step, so a denoiser that offers `encode_memory` gets them
encoded once per AR step (`memory_cache=`) instead of re-reading them at every sub-step (docs/sampler.md).
"""
from __future__ import annotations

import math

import torch

from training.diffusion import Diffusion
from training.schedules import ARSchedule, LastFrames, check_causal


def _grid_to_timesteps(levels: list[int], num_levels: int, num_timesteps: int) -> list[int]:
    """Grid level l in [0, T] -> diffusion timestep round(l K / T) in [0, K]."""
    return [int(round(level * num_timesteps / num_levels)) for level in levels]


def _references(known_x, known_a, idx: list[int], size: int):
    """mem_x (B,size,C,H,W), mem_actions (B,size), mem_mask (B,size) from known frames `idx`, left-padded."""
    if size == 0:
        return None, None, None
    B = known_x.shape[0]
    mem_x = known_x.new_zeros((B, size, *known_x.shape[2:]))
    mem_a = known_a.new_zeros((B, size))
    mask = torch.zeros((B, size), dtype=torch.bool, device=known_x.device)
    n = len(idx)
    if n:
        if idx == list(range(idx[0], idx[0] + n)):  # contiguous (LastFrames): a view, no gather
            mem_x[:, size - n:] = known_x[:, idx[0]:idx[0] + n]
            mem_a[:, size - n:] = known_a[:, idx[0]:idx[0] + n]
        else:
            t = torch.tensor(idx, device=known_x.device)
            mem_x[:, size - n:] = known_x.index_select(1, t)
            mem_a[:, size - n:] = known_a.index_select(1, t)
        mask[:, size - n:] = True
    return mem_x, mem_a, mask


@torch.no_grad()
def sample(denoiser, diffusion: Diffusion, schedule: ARSchedule, actions: torch.Tensor,
           memory_x: torch.Tensor | None, memory_actions: torch.Tensor | None, memory_length: int,
           generator: torch.Generator, frame_shape: tuple[int, int, int] | None = None, *,
           eta: float = 0.0, reference=None, cache_memory: bool = True) -> torch.Tensor:
    """Generate N frames with Meta-ARVDM; returns (B,N,C,H,W) on actions.device.

    Args:
        denoiser: v-prediction callable (x, noise_levels, actions, mem_x, mem_actions, mem_mask).
        diffusion: the `Diffusion` that defines levels, v <-> x0 and the DDIM step.
        schedule: an `ARSchedule` (w, Delta, L^I, L^O, sub-steps), validated against Requirement 1.
        actions: (B,N) int64, the action of each frame to generate (frame t is conditioned on actions[:, t]).
        memory_x: (B,M0,C,H,W) clean ground-truth context frames, or None. memory_actions: (B,M0) or None.
        memory_length: M, number of reference slots (0 = no memory; denoiser gets mem_x=None).
        generator: the only source of randomness (noise draws happen on generator.device).
        frame_shape: (C,H,W); needed only when memory_x is None.
        eta: DDIM eta (0 deterministic, 1 DDPM-like).
        reference: a reference policy (`indices(num_known)`, `size`); default LastFrames(memory_length).
        cache_memory: when the denoiser offers `encode_memory(mem_x, mem_actions, mem_mask) -> cache` (and
            accepts `memory_cache=cache`), encode each distinct memory once and reuse it for every sub-step
            that sees it; False (or a denoiser without it) passes mem_x/mem_actions/mem_mask to every call.
            Both give the same frames up to float rounding.
    """
    device = actions.device
    B, N = actions.shape
    if memory_x is not None:
        if memory_actions is None or memory_actions.shape != memory_x.shape[:2]:
            raise ValueError("memory_actions must be given with memory_x, shape (B,M0) matching memory_x (B,M0,C,H,W)")
        frame_shape = tuple(memory_x.shape[2:])
    if frame_shape is None:
        raise ValueError("frame_shape (C,H,W) is required when memory_x is None")
    reference = reference if reference is not None else LastFrames(memory_length)
    w, delta, T, K = schedule.w, schedule.delta, schedule.num_levels, diffusion.num_timesteps
    num_ar = math.ceil(N / delta)
    span = (num_ar - 1) * delta + w  # frames touched by the last window (beyond N: dummies, discarded)

    # actions for every window position; positions past N repeat the last action (their frames are dropped,
    # and a causal denoiser keeps them from influencing earlier frames).
    acts = torch.cat([actions, actions[:, -1:].expand(B, span - N)], 1) if span > N else actions

    # clean frames known so far: given memory first, then generated frames (index = order of knowing).
    M0 = 0 if memory_x is None else memory_x.shape[1]
    dtype = torch.float32  # the DDIM state stays float32 even for float16 latent memory
    known_x = torch.zeros((B, M0 + num_ar * delta, *frame_shape), device=device, dtype=dtype)
    known_a = torch.zeros((B, M0 + num_ar * delta), device=device, dtype=actions.dtype)
    if M0:
        known_x[:, :M0] = memory_x.to(device)
        known_a[:, :M0] = memory_actions.to(device)
    known_a[:, M0:] = acts[:, :num_ar * delta]  # span >= num_ar * delta since w >= delta

    def levels_tensor(ks: list[int]) -> torch.Tensor:
        return torch.tensor(ks, device=device, dtype=torch.long).expand(B, len(ks))

    encode = getattr(denoiser, "encode_memory", None) if cache_memory else None
    last: list = [None, None]  # (reference indices, denoiser memory kwargs) of the latest memory

    def memory(idx: list[int]) -> dict:
        """The denoiser's memory kwargs for reference frames `idx`; the same indices name the same frames
        (known frames are never rewritten), so a repeated memory is neither gathered nor encoded again."""
        if last[0] != idx:
            mem_x, mem_a, mask = _references(known_x, known_a, idx, reference.size)
            if encode is None or mem_x is None:
                last[1] = dict(mem_x=mem_x, mem_actions=mem_a, mem_mask=mask)
            else:
                last[1] = dict(memory_cache=encode(mem_x, mem_a, mask))
            last[0] = idx
        return last[1]

    def denoise(x, k_from, k_to, a, mem):
        v = denoiser(x, diffusion.model_levels(k_from), a, **mem)
        noise = diffusion.randn(x.shape, generator, device, x.dtype) if eta > 0 else None
        return diffusion.ddim_step(x, k_from, k_to, v, noise=noise, eta=eta)

    # [1] Initialization stage (Alg. 2): i0 = w frames jointly from pure noise, then noise the first w - Delta.
    carry = torch.zeros((B, 0, *frame_shape), device=device, dtype=dtype)
    if w > delta:
        mem = memory(check_causal(reference, M0, "init"))
        x = diffusion.randn((B, w, *frame_shape), generator, device, dtype)
        M = schedule.init_steps
        ks = [int(round(K * (M - n) / M)) for n in range(M + 1)]  # K -> 0 in M steps (Eqn. 3.1 grid)
        for n in range(M):
            x = denoise(x, levels_tensor([ks[n]] * w), levels_tensor([ks[n + 1]] * w), acts[:, :w], mem)
        k_in = levels_tensor(_grid_to_timesteps(schedule.levels_in[:w - delta], T, K))
        carry = diffusion.q_sample(x[:, :w - delta], k_in,
                                   diffusion.randn((B, w - delta, *frame_shape), generator, device, dtype))

    # [2] Auto-regressive stage (Alg. 1 loop; Alg. 3 step; Eqn. 3.3 sub-steps).
    steps = [(levels_tensor(_grid_to_timesteps(lf, T, K)), levels_tensor(_grid_to_timesteps(lt, T, K)))
             for lf, lt in schedule.substep_levels()]
    for s in range(num_ar):
        i = s * delta  # frames 0..i-1 are generated; this step denoises frames i..i+w-1
        mem = memory(check_causal(reference, M0 + i, s))
        x = torch.cat([carry, diffusion.randn((B, delta, *frame_shape), generator, device, dtype)], 1)  # (B,w,C,H,W)
        a = acts[:, i:i + w]
        for k_from, k_to in steps:
            x = denoise(x, k_from, k_to, a, mem)
        known_x[:, M0 + i:M0 + i + delta] = x[:, :delta]
        carry = x[:, delta:]
    return known_x[:, M0:M0 + N]
