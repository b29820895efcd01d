"""Discrete Gaussian diffusion with per-frame noise levels: schedule, v-prediction, fused-SNR loss, DDIM step.

Used by the training loop (`Diffusion.training_loss`) and the Meta-ARVDM sampler (`Diffusion.ddim_step`).
Pure torch: no Ray, so it runs on a GPU box with torch alone.

    from training.diffusion import Diffusion
    diffusion = Diffusion(num_timesteps=1000, schedule="sigmoid")
    loss, stats = diffusion.training_loss(denoiser, batch, torch.Generator().manual_seed(0))

Conventions. A frame's noise level is an integer k in [0, K] (K = `num_timesteps`): k = 0 is the clean frame,
k = K is (numerically) pure noise. The denoiser sees k/K in [0, 1] (`model_levels`). Each frame carries its own
k (diffusion forcing, Chen et al. 2024), so every function takes k of shape (B,T) beside x of shape (B,T,C,H,W).
alpha_bar[k] = prod_{j<=k} (1 - beta_j), alpha_bar[0] = 1.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from training.choices import SCHEDULES


# ----------------------------------------------------------------------------------------------- schedules
def sigmoid_alpha_bar(num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """alpha_bar on t = k/K for k = 0..K (float64, (K+1,)).

    Sigmoid schedule of Jabri et al. 2022 (arXiv:2212.11972, Fig. 8), the default of diffusion forcing
    (buoyancy99/diffusion-forcing `sigmoid_beta_schedule`): alpha_bar(t) proportional to
    sigmoid(end/tau) - sigmoid((t (end - start) + start) / tau), normalised to alpha_bar(0) = 1.
    """
    t = torch.linspace(0, 1, num_timesteps + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    abar = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    return abar / abar[0]


def cosine_alpha_bar(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar for k = 0..K (float64, (K+1,)); cosine schedule of Nichol & Dhariwal 2021, Eqn. 17."""
    t = torch.linspace(0, 1, num_timesteps + 1, dtype=torch.float64)
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return abar / abar[0]


def _clip_betas(abar: torch.Tensor, max_beta: float = 0.999) -> torch.Tensor:
    """Recompute alpha_bar from betas clipped to [0, max_beta] (Nichol & Dhariwal 2021, Sec. 3.2), so the
    last level keeps a tiny positive alpha_bar instead of exactly 0 (finite x0 / v conversions)."""
    betas = (1 - abar[1:] / abar[:-1]).clamp(0, max_beta)
    return torch.cat([abar.new_ones(1), torch.cumprod(1 - betas, 0)])


# ----------------------------------------------------------------------------------------------- diffusion
class Diffusion:
    """Discrete VP diffusion over K timesteps with per-frame levels.

    Args:
        num_timesteps: K, the number of discrete noise levels above clean.
        schedule: "sigmoid" (diffusion forcing's default) or "cosine".
        snr_clip: min-SNR clip gamma (Hang et al. 2023, arXiv:2303.09556), 5.0 as in diffusion forcing.
        cum_snr_decay: fused-SNR cumulative decay across frames (paper App. J: 0.96).
        clip_noise: sampled Gaussian noise is clamped to +-clip_noise (paper App. J: 6.0).
        use_fused_snr: fused-SNR weighting (App. J) if True, plain min-SNR weighting otherwise.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "sigmoid", snr_clip: float = 5.0,
                 cum_snr_decay: float = 0.96, clip_noise: float = 6.0, use_fused_snr: bool = True):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}: valid values are {SCHEDULES}")
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps={num_timesteps}: must be >= 1")
        if not 0.0 <= cum_snr_decay < 1.0:
            raise ValueError(f"cum_snr_decay={cum_snr_decay}: must be in [0, 1)")
        self.num_timesteps = int(num_timesteps)
        self.schedule = schedule
        self.snr_clip = float(snr_clip)
        self.cum_snr_decay = float(cum_snr_decay)
        self.clip_noise = float(clip_noise)
        self.use_fused_snr = bool(use_fused_snr)
        abar = sigmoid_alpha_bar(num_timesteps) if schedule == "sigmoid" else cosine_alpha_bar(num_timesteps)
        self.alpha_bar = _clip_betas(abar)  # float64 (K+1,), alpha_bar[0] = 1
        self._tables: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"Diffusion(num_timesteps={self.num_timesteps}, schedule={self.schedule!r}, snr_clip={self.snr_clip}, "
                f"cum_snr_decay={self.cum_snr_decay}, clip_noise={self.clip_noise})")

    # -- per-level coefficients, broadcast to x ------------------------------------------------------
    def _abar(self, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar[k] shaped like k plus singleton dims to broadcast against `like` (B,T,C,H,W)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = self.alpha_bar.to(device=like.device, dtype=like.dtype)
        a = self._tables[key][k.to(like.device).long()]
        return a.reshape(*k.shape, *([1] * (like.dim() - k.dim())))

    def model_levels(self, k: torch.Tensor) -> torch.Tensor:
        """The denoiser's time input: k/K as float32 in [0, 1], same shape as k (B,T)."""
        return k.float() / self.num_timesteps

    def snr(self, k: torch.Tensor) -> torch.Tensor:
        """alpha_bar / (1 - alpha_bar) per level (float64; inf at k = 0)."""
        abar = self.alpha_bar.to(k.device)[k.long()]
        return abar / (1 - abar)

    def randn(self, shape, generator: torch.Generator | Sequence[torch.Generator], device,
              dtype=torch.float32) -> torch.Tensor:
        """Standard normal noise clamped to +-clip_noise (App. J), drawn on the generator's device.

        `generator` may be a sequence of shape[0] generators, one per batch item: item b's noise then comes from
        generator[b] alone, so a sample does not depend on which other items share its batch (evaluation seeds
        one generator per case)."""
        if isinstance(generator, torch.Generator):
            noise = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        else:
            if len(generator) != shape[0]:
                raise ValueError(f"randn: {len(generator)} generators for a batch of {shape[0]}")
            noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
                                 for g in generator])
        return noise.clamp_(-self.clip_noise, self.clip_noise).to(device)

    # -- forward process and parameterisations --------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise (Ho et al. 2020, Eqn. 4); x0, noise (B,T,C,H,W), k (B,T)."""
        a = self._abar(k, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def v_target(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar) noise - sqrt(1 - abar) x0 (Salimans & Ho 2022, Sec. 4), (B,T,C,H,W)."""
        a = self._abar(k, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0_eps(self, x_k: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from a v-prediction: x0 = sqrt(a) x_k - sqrt(1-a) v, eps = sqrt(1-a) x_k + sqrt(a) v."""
        a = self._abar(k, x_k)
        sa, s1a = a.sqrt(), (1 - a).sqrt()
        return sa * x_k - s1a * v, s1a * x_k + sa * v

    # -- loss weights --------------------------------------------------------------------------------
    def loss_weights(self, k: torch.Tensor) -> torch.Tensor:
        """Per-frame loss weights (B,T) for the v-prediction loss.

        min-SNR (Hang et al. 2023, Eqn. 8 for v-prediction): w = min(snr, gamma) / (snr + 1).
        fused SNR (diffusion forcing, `compute_loss_weights`; paper App. J, decay 0.96): a frame's SNR is
        fused with the SNR accumulated over the frames before it, because earlier noisier frames make the
        current one harder to predict. With n_t = min(snr_t, gamma)/gamma,
            c_0 = n_0,   c_t = decay * c_{t-1} + (1 - decay) * n_t   (the running mean starts AT the first
        frame's value, as diffusion forcing's code does; starting from 0 changed the weights by 14-34%),
        shifted by one frame (frame t uses c_{t-1}, frame 0 uses 0), then
            fused_t = 1 - (1 - decay * c_{t-1}) (1 - snr_t / gamma)     (and its clipped twin with n_t),
            w_t = gamma * clipped_fused_t / (gamma * fused_t + 1).
        The accumulation runs over the current window only (memory frames are not part of the loss).
        """
        snr = self.snr(k)  # (B,T) float64
        gamma = self.snr_clip
        clipped = snr.clamp(max=gamma)
        if not self.use_fused_snr:
            return (clipped / (snr + 1)).float()
        norm_clipped = clipped / gamma
        norm = snr / gamma
        cum = torch.zeros_like(norm_clipped)
        run = norm_clipped[:, 0]  # c_0 = n_0
        for t in range(1, k.shape[1]):  # (B,T): time is dim 1
            cum[:, t] = run  # shifted by one frame: frame t uses c_{t-1}, frame 0 uses 0
            run = self.cum_snr_decay * run + (1 - self.cum_snr_decay) * norm_clipped[:, t]
        fused_clipped = 1 - (1 - cum * self.cum_snr_decay) * (1 - norm_clipped)
        fused = 1 - (1 - cum * self.cum_snr_decay) * (1 - norm)
        return (gamma * fused_clipped / (gamma * fused + 1)).float()

    # -- training ------------------------------------------------------------------------------------
    def training_loss(self, denoiser, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Diffusion-forcing loss on the current frames: independent per-frame k, v-prediction, fused SNR.

        batch: x (B,T,C,H,W) clean current frames in [-1,1], actions (B,T), and mem_x (B,M,C,H,W),
        mem_actions (B,M), mem_mask (B,M) (absent or None for memory "none"). Memory frames are passed clean
        and carry no loss (paper Sec. 5: "we will only denoise the current w frames").
        Returns (scalar loss, stats dict of floats).
        """
        x0 = batch["x"]
        B, T = x0.shape[:2]
        k = torch.randint(1, self.num_timesteps + 1, (B, T), generator=generator, device=generator.device).to(x0.device)
        noise = self.randn(x0.shape, generator, x0.device, x0.dtype)
        x_k = self.q_sample(x0, k, noise)
        v = denoiser(x_k, self.model_levels(k), batch["actions"], mem_x=batch.get("mem_x"),
                     mem_actions=batch.get("mem_actions"), mem_mask=batch.get("mem_mask"))
        if v.shape != x0.shape:
            raise ValueError(f"denoiser returned shape {tuple(v.shape)}, expected {tuple(x0.shape)} (B,T,C,H,W)")
        mse = (v.float() - self.v_target(x0, k, noise).float()).pow(2).flatten(2).mean(-1)  # (B,T)
        weights = self.loss_weights(k).to(mse.device)
        loss = (mse * weights).mean()
        stats = {"loss": float(loss.detach()), "mse_v": float(mse.detach().mean()),
                 "loss_weight_mean": float(weights.mean()), "k_mean": float(k.float().mean())}
        return loss, stats

    # -- sampling ------------------------------------------------------------------------------------
    def ddim_step(self, x_k: torch.Tensor, k_from: torch.Tensor, k_to: torch.Tensor, v: torch.Tensor,
                  noise: torch.Tensor | None = None, eta: float = 0.0) -> torch.Tensor:
        """One DDIM step per frame from level k_from (B,T) to k_to (B,T); x_k, v, noise (B,T,C,H,W).

        Song et al. 2021 (DDIM), Eqn. 12, applied frame by frame with each frame's own levels:
            x_to = sqrt(a_to) x0 + sqrt(1 - a_to - sigma^2) eps + sigma z,
            sigma = eta sqrt((1 - a_to)/(1 - a_from)) sqrt(1 - a_from/a_to).
        eta = 0 is the deterministic DDIM (probability-flow) step, eta = 1 the DDPM posterior. Frames with
        k_to >= k_from (clean context, or frames waiting their turn) are returned unchanged. `noise` is
        needed only when eta > 0.
        """
        if eta > 0 and noise is None:
            raise ValueError("ddim_step: eta > 0 needs `noise` (B,T,C,H,W) from the caller's generator")
        a_from, a_to = self._abar(k_from, x_k), self._abar(k_to, x_k)
        x0, eps = self.predict_x0_eps(x_k, k_from, v)
        sigma = eta * ((1 - a_to) / (1 - a_from).clamp_min(1e-20) * (1 - a_from / a_to)).clamp_min(0).sqrt()
        out = a_to.sqrt() * x0 + (1 - a_to - sigma ** 2).clamp_min(0).sqrt() * eps
        if eta > 0:
            out = out + sigma * noise
        move = (k_to < k_from).reshape(*k_to.shape, *([1] * (x_k.dim() - k_to.dim()))).to(x_k.device)
        return torch.where(move, out, x_k)
