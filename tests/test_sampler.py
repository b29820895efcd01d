"""Meta-ARVDM sampler: exact-score correctness on Gaussian AR(1) videos, determinism, causality, references."""
import pytest
import torch

from training.diffusion import Diffusion
from training.sampler import sample
from training.schedules import LastFrames, df_chunked, df_pyramid, fifo, outpainting

RHO = 0.8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core box (15x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- stand-ins
class GaussianAR1Denoiser:
    """Exact v-prediction for stationary AR(1) "videos": every scalar of a frame follows
    x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t independently, so Cov(x_s, x_t) = rho^|s-t|.

    Given clean references (the mem_mask=True slots, contiguous and just before the window) and the noisy
    window y_i = sqrt(abar_i) x_i + sqrt(1 - abar_i) e_i at each frame's own level, E[x_window | refs, y] is
    Gaussian conditioning; v = (sqrt(abar) y - x0_hat) / sqrt(1 - abar)."""

    def __init__(self, diffusion: Diffusion, rho: float = RHO):
        self.diffusion, self.rho, self.calls = diffusion, rho, 0

    def __call__(self, x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None):
        self.calls += 1
        B, T = x.shape[:2]
        K = self.diffusion.num_timesteps
        k = torch.round(noise_levels * K).long()
        r = 0 if mem_x is None else int(mem_mask[0].sum())
        assert mem_x is None or bool((mem_mask.sum(1) == r).all())
        assert bool((k == k[0]).all()), "stand-in assumes one level row for the whole batch"
        abar = self.diffusion.alpha_bar[k[0]]  # (T,) float64
        a, s2 = abar.sqrt(), 1 - abar
        tau = torch.arange(-r, T, dtype=torch.float64)
        sigma = self.rho ** (tau[:, None] - tau[None, :]).abs()  # (r+T, r+T)
        scale = torch.cat([torch.ones(r, dtype=torch.float64), a])
        cz = scale[:, None] * sigma * scale[None, :] + torch.diag(torch.cat([torch.zeros(r, dtype=torch.float64), s2]))
        cxz = sigma[r:] * scale[None, :]  # (T, r+T)
        gain = torch.linalg.solve(cz, cxz.T).T  # (T, r+T)
        flat = x.reshape(B, T, -1).double()
        if r:
            refs = mem_x[:, -r:].reshape(B, r, -1).double()  # left-padded: the valid slots are the last r
            flat = torch.cat([refs, flat], 1)
        x0 = torch.einsum("ij,bjd->bid", gain, flat)
        y = x.reshape(B, T, -1).double()
        v = (a[None, :, None] * y - x0) / s2.clamp_min(1e-12).sqrt()[None, :, None]
        return v.reshape(x.shape).to(x.dtype)


class CausalToyDenoiser(torch.nn.Module):
    """Random-weight causal stand-in: frame t sees frames <= t, its action and the mean of the valid memory."""

    def __init__(self, channels: int = 3, num_actions: int = 7, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w_now = torch.nn.Parameter(torch.randn(channels, channels, generator=g) * 0.3)
        self.w_prev = torch.nn.Parameter(torch.randn(channels, channels, generator=g) * 0.3)
        self.emb = torch.nn.Parameter(torch.randn(num_actions, channels, generator=g) * 0.3)

    def forward(self, x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None):
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        h = torch.einsum("btchw,dc->btdhw", x, self.w_now) + torch.einsum("btchw,dc->btdhw", prev, self.w_prev)
        h = h + self.emb[actions][..., None, None] + noise_levels[..., None, None, None]
        if mem_x is not None:
            m = (mem_x * mem_mask[..., None, None, None]).sum(1) / mem_mask.sum(1).clamp_min(1)[:, None, None, None]
            h = h + 0.5 * m[:, None]
        return torch.tanh(h)


def _ar1(batch: int, frames: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Stationary AR(1) sequences (B,T,d,1,1)."""
    x = torch.empty(batch, frames, d, dtype=torch.float64)
    x[:, 0] = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    for t in range(1, frames):
        noise = torch.randn(batch, d, generator=generator, dtype=torch.float64)
        x[:, t] = RHO * x[:, t - 1] + (1 - RHO ** 2) ** 0.5 * noise
    return x.float()[..., None, None]


def _stat_error(video: torch.Tensor) -> float:
    """Max abs deviation of the empirical mean and covariance (over frames, pooled over dims) from the
    stationary AR(1) law: mean 0, Cov(x_s, x_t) = rho^|s-t| (variances and adjacent correlations included)."""
    B, T, d = video.shape[:3]
    z = video.reshape(B, T, d).permute(0, 2, 1).reshape(B * d, T).double()
    cov = (z - z.mean(0)).T @ (z - z.mean(0)) / (z.shape[0] - 1)
    t = torch.arange(T, dtype=torch.float64)
    target = RHO ** (t[:, None] - t[None, :]).abs()
    return max(float(z.mean(0).abs().max()), float((cov - target).abs().max()))


# ----------------------------------------------------------------------------------------------- exact score
@pytest.mark.parametrize("family", ["outpainting", "fifo"])
def test_exact_score_reproduces_ar1_law(family):
    """Driving the sampler with the exact predictor reproduces mean and covariance (variance, adjacent-frame
    and memory-to-generated correlation) of the AR(1) law; the error shrinks as denoising steps grow."""
    diffusion = Diffusion(1000, "sigmoid")
    B, d, N, w, M0 = 4096, 2, 6, 4, 2
    memory = _ar1(B, M0, d, torch.Generator().manual_seed(123))
    actions = torch.zeros(B, N, dtype=torch.long)
    errors = []
    grid = (1, 8, 64) if family == "outpainting" else (1, 4, 16)  # 138 and 210 denoiser calls
    for steps in grid:
        sched = outpainting(w, steps) if family == "outpainting" else df_pyramid(w, steps)
        video = sample(GaussianAR1Denoiser(diffusion), diffusion, sched, actions, memory,
                       torch.zeros(B, M0, dtype=torch.long), 2, torch.Generator().manual_seed(7))
        assert video.shape == (B, N, d, 1, 1)
        errors.append(_stat_error(torch.cat([memory, video], 1)))
    assert errors[0] > 0.2, errors  # coarse discretisation is visibly wrong ...
    assert errors[0] > errors[1] > errors[2], errors  # ... and converges with more steps
    assert errors[2] < 0.07, errors  # floor: sampling noise of 4096 x 2 draws, 0.023 at 256 steps


def test_exact_score_stochastic_pyramid_without_given_memory():
    """No ground-truth context, DDPM-like eta=1, FIFO-style staircase on a fine grid, cosine schedule: the
    generated frames become the references (memory_length=1 suffices for a Markov chain): stationary law."""
    diffusion = Diffusion(1000, "cosine")
    B, d, N, w = 4096, 2, 6, 4
    video = sample(GaussianAR1Denoiser(diffusion), diffusion, df_pyramid(w, 32), torch.zeros(B, N, dtype=torch.long),
                   None, None, 1, torch.Generator().manual_seed(3), frame_shape=(d, 1, 1), eta=1.0)
    assert _stat_error(video) < 0.07  # measured 0.098 / 0.053 / 0.035 at 16 / 32 / 64 sub-steps


def test_memory_bottleneck_without_references():
    """Paper Sec. 4: with no references, outpainting windows are independent, so the correlation of adjacent
    frames across an AR-step boundary drops from rho to 0 while it stays rho inside a window."""
    diffusion = Diffusion(1000)
    B, d, w = 4096, 2, 3
    video = sample(GaussianAR1Denoiser(diffusion), diffusion, outpainting(w, 32),
                   torch.zeros(B, 2 * w, dtype=torch.long), None, None, 0, torch.Generator().manual_seed(4),
                   frame_shape=(d, 1, 1))
    z = video.reshape(B, 2 * w, d).double()
    corr = lambda i, j: float(torch.corrcoef(torch.stack([z[:, i].flatten(), z[:, j].flatten()]))[0, 1])
    assert abs(corr(0, 1) - RHO) < 0.06 and abs(corr(w, w + 1) - RHO) < 0.06
    assert abs(corr(w - 1, w)) < 0.06


# ----------------------------------------------------------------------------------------------- mechanics
@pytest.mark.parametrize("sched", [outpainting(4, 3), fifo(4), df_pyramid(4, 2), df_chunked(4, 2, 2)],
                         ids=lambda s: s.name)
def test_seed_determinism_and_causality(sched):
    diffusion = Diffusion(100)
    model = CausalToyDenoiser()
    B, N = 2, 7
    actions = torch.randint(0, 7, (B, N), generator=torch.Generator().manual_seed(0))
    mem = torch.randn(B, 3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    mem_a = torch.zeros(B, 3, dtype=torch.long)

    def run(a, seed, eta=0.5):
        return sample(model, diffusion, sched, a, mem, mem_a, 2, torch.Generator().manual_seed(seed), eta=eta)

    first = run(actions, 5)
    assert first.shape == (B, N, 3, 4, 4) and torch.isfinite(first).all()
    assert torch.equal(first, run(actions, 5))
    assert (first - run(actions, 6)).abs().max() > 1e-3
    changed = actions.clone()
    j = 4
    changed[:, j] = (changed[:, j] + 1) % 7
    other = run(changed, 5)
    assert torch.equal(first[:, :j], other[:, :j])  # earlier frames do not see a future action
    assert (first[:, j:] - other[:, j:]).abs().max() > 1e-4  # ... and the action does matter from frame j on


def test_references_are_last_known_frames_and_calls_per_substep():
    """mem_x holds the last `memory_length` known frames (given memory, then generated), left-padded with
    mask False while fewer are known; one denoiser call per sub-step for the whole window."""
    diffusion = Diffusion(50)
    seen = []

    def recorder(x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None):
        seen.append((mem_x.clone(), mem_actions.clone(), mem_mask.clone()))
        return torch.zeros_like(x)

    B, N, m = 2, 6, 3
    sched = df_chunked(4, 2, 2)  # w=4, delta=2, 2 sub-steps, init_steps=4
    mem = torch.randn(B, 1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    mem_a = torch.full((B, 1), 5)
    actions = torch.arange(N).expand(B, N)
    out = sample(recorder, diffusion, sched, actions, mem, mem_a, m, torch.Generator().manual_seed(0))
    num_ar = N // sched.delta
    assert len(seen) == sched.init_steps + num_ar * sched.substeps
    known = torch.cat([mem, out], 1)
    known_a = torch.cat([mem_a, actions], 1)
    for s in range(num_ar):
        mem_x, mem_actions, mask = seen[sched.init_steps + s * sched.substeps]
        n_known = 1 + s * sched.delta
        n = min(m, n_known)
        assert mask[0].tolist() == [False] * (m - n) + [True] * n
        assert torch.equal(mem_x[:, m - n:], known[:, n_known - n:n_known])
        assert torch.equal(mem_actions[:, m - n:], known_a[:, n_known - n:n_known])
    # the initialization stage sees only the given memory
    assert seen[0][2][0].tolist() == [False, False, True]


def test_non_causal_reference_policy_is_rejected():
    class Peek(LastFrames):
        def indices(self, num_known):
            return [num_known]  # the frame being generated

    with pytest.raises(ValueError, match=r"causality"):
        sample(CausalToyDenoiser(), Diffusion(20), outpainting(2, 2), torch.zeros(1, 2, dtype=torch.long), None,
               None, 1, torch.Generator().manual_seed(0), frame_shape=(3, 2, 2), reference=Peek(1))


def test_memory_length_zero_passes_no_memory():
    got = []

    def recorder(x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None):
        got.append(mem_x)
        assert noise_levels.dtype == torch.float32 and 0 <= float(noise_levels.min()) <= float(noise_levels.max()) <= 1
        return torch.zeros_like(x)

    out = sample(recorder, Diffusion(20), fifo(3), torch.zeros(1, 4, dtype=torch.long),
                 torch.zeros(1, 2, 3, 2, 2, dtype=torch.float16), torch.zeros(1, 2, dtype=torch.long), 0,
                 torch.Generator().manual_seed(0))
    assert got and all(m is None for m in got)
    assert out.dtype == torch.float32  # float16 latent memory does not make the DDIM state float16


# ----------------------------------------------------------------------------------------------- real denoiser
@pytest.mark.parametrize("memory,compression", [("none", "none"), ("prepend", "none"), ("concat", "none"),
                                                ("cross_attn", "none"), ("prepend", "joint"),
                                                ("concat", "modulated")])
def test_sampler_drives_the_tiny_denoiser(memory, compression):
    """The real tiny U-Net under outpainting and FIFO: finite frames, causal in actions, memory is read."""
    from training.models import ModelConfig, build_denoiser

    m = 0 if memory == "none" else 3
    cfg = ModelConfig(preset="tiny", resolution=8, memory=memory, memory_length=max(m, 1), compression=compression,
                      budget=2, window=2)
    net = build_denoiser(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # zero-initialised output/embedding layers would hide the plumbing: perturb all weights
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    diffusion = Diffusion(100)
    B, N = 2, 4
    actions = torch.randint(0, 7, (B, N), generator=torch.Generator().manual_seed(0))
    mem = torch.rand(B, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mem_a = torch.zeros(B, 2, dtype=torch.long)
    for sched in (outpainting(2, 2), fifo(2)):
        def run(a, memory_x, sched=sched):
            return sample(net, diffusion, sched, a, memory_x, mem_a, m, torch.Generator().manual_seed(2))

        out = run(actions, mem)
        assert out.shape == (B, N, 3, 8, 8) and torch.isfinite(out).all()
        changed = actions.clone()
        changed[:, 2] = (changed[:, 2] + 1) % 7
        other = run(changed, mem)
        assert torch.allclose(out[:, :2], other[:, :2], atol=1e-5), sched.name
        assert (out[:, 2:] - other[:, 2:]).abs().max() > 1e-6, sched.name
        moved = (out - run(actions, -mem)).abs().max()
        assert (moved > 1e-6) if m else (moved == 0), (sched.name, float(moved))
