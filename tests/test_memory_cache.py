"""Memory cache (docs/sampler.md): `Denoiser.encode_memory` + `forward(memory_cache=)` equals the uncached forward,
and `sample(cache_memory=True)` equals `cache_memory=False`, for every memory structure x compression and every
schedule preset, with padded and masked memory. Tiny U-Net on 8x8 frames, fp32, one thread."""
import itertools

import pytest
import torch

from training.diffusion import Diffusion
from training.models import COMPRESSIONS, MEMORIES, ModelConfig, build_denoiser
from training.sampler import sample
from training.schedules import df_chunked, df_pyramid, fifo, outpainting

R, W, M = 8, 4, 3  # resolution, window, memory_length
TOL = dict(rtol=1e-5, atol=1e-5)
COMBOS = [(m, c) for m, c in itertools.product(MEMORIES, COMPRESSIONS) if not (m == "none" and c != "none")]
SCHEDULES = [outpainting(2, 2), fifo(3), df_pyramid(3, 2), df_chunked(4, 2, 2)]  # small windows: a fast file


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(memory, compression):
    cfg = ModelConfig(preset="tiny", resolution=R, memory=memory, memory_length=M,
                      compression=compression, budget=2, window=W)
    net = build_denoiser(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output layers would make both paths output 0: perturb every weight
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def window(seed, b=2, t=W):
    g = torch.Generator().manual_seed(seed)
    x, levels = torch.randn(b, t, 3, R, R, generator=g), torch.rand(b, t, generator=g)
    return x, levels, torch.randint(0, 7, (b, t), generator=g)


# ----------------------------------------------------------------------------------------------- the denoiser
@pytest.mark.parametrize("memory,compression", COMBOS)
def test_forward_with_cache_equals_uncached(memory, compression):
    """Full, per-clip padded (different in each clip), all-masked and longer-than-memory_length memories; one
    cache serves several windows (different frames, levels, actions) and is not changed by use."""
    net = make(memory, compression)
    g = torch.Generator().manual_seed(2)
    mem_x, mem_a = torch.randn(2, M + 1, 3, R, R, generator=g), torch.randint(0, 7, (2, M + 1), generator=g)
    padded = torch.tensor([[False, False, True, True], [False, True, True, True]])
    for mask in (None, padded, torch.zeros(2, M + 1, dtype=torch.bool)):
        with torch.no_grad():
            cache = net.encode_memory(mem_x, mem_a, mask)
            for seed in (3, 4):  # the second window writes into the first one's key/value buffers
                x, levels, actions = window(seed)
                ref = net(x, levels, actions, mem_x, mem_a, mask)
                torch.testing.assert_close(net(x, levels, actions, memory_cache=cache), ref, **TOL)
        with torch.enable_grad():  # under autograd the cache is read, never written
            torch.testing.assert_close(net(x, levels, actions, memory_cache=cache).detach(), ref, **TOL)
    with torch.no_grad():  # and the memory does reach the cached output (not only the uncached one)
        moved = net(x, levels, actions, memory_cache=net.encode_memory(mem_x + 1, mem_a))
        base = net(x, levels, actions, memory_cache=net.encode_memory(mem_x, mem_a))
    assert ((moved - base).abs().max() > 1e-4) == (memory != "none")


def test_cache_errors_name_the_problem():
    net = make("prepend", "none")
    x, levels, actions = window(0)
    mem_x, mem_a = torch.zeros(2, M, 3, R, R), torch.zeros(2, M, dtype=torch.long)
    cache = net.encode_memory(mem_x, mem_a)
    with pytest.raises(ValueError, match="not both"):
        net(x, levels, actions, mem_x, mem_a, memory_cache=cache)
    with pytest.raises(ValueError, match="1 clips"):
        net(x[:1], levels[:1], actions[:1], memory_cache=cache)
    with pytest.raises(ValueError, match="memory='concat'"):
        make("concat", "none")(x, levels, actions, memory_cache=cache)
    with pytest.raises(ValueError, match="mem_actions must be"):
        net.encode_memory(mem_x, mem_a[:, :1])


# ----------------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("memory,compression", COMBOS)
def test_sample_cached_equals_uncached(memory, compression):
    """Every schedule preset; 1 given memory frame for 3 slots, so the memory is left-padded (masked) in the
    first AR steps and full later; eta > 0 so the noise draws must line up too."""
    net = make(memory, compression)
    diffusion = Diffusion(100)
    g = torch.Generator().manual_seed(5)
    mem_x, mem_a = torch.rand(2, 1, 3, R, R, generator=g) * 2 - 1, torch.randint(0, 7, (2, 1), generator=g)
    actions = torch.randint(0, 7, (2, 4), generator=g)
    for sched in SCHEDULES:
        out = [sample(net, diffusion, sched, actions, mem_x, mem_a, M, torch.Generator().manual_seed(6), eta=0.5,
                      cache_memory=cached) for cached in (True, False)]
        torch.testing.assert_close(out[0], out[1], **TOL, msg=lambda m, sched=sched: f"{sched.name}: {m}")


class Recorder(torch.nn.Module):
    """Wraps the denoiser and counts what the sampler asks of it."""

    def __init__(self, net):
        super().__init__()
        self.net, self.encodes, self.calls, self.cached_calls = net, 0, 0, 0

    def encode_memory(self, *args):
        self.encodes += 1
        return self.net.encode_memory(*args)

    def forward(self, *args, **kwargs):
        self.calls += 1
        self.cached_calls += "memory_cache" in kwargs
        return self.net(*args, **kwargs)


def test_sampler_encodes_each_memory_once_and_only_when_offered():
    net = make("prepend", "none")
    diffusion, sched = Diffusion(100), df_chunked(W, 2, 2)  # init stage + 3 AR steps of 2 sub-steps
    actions = torch.zeros(1, 6, dtype=torch.long)
    mem_x, mem_a = torch.zeros(1, 1, 3, R, R), torch.zeros(1, 1, dtype=torch.long)

    def run(model, **kw):
        return sample(model, diffusion, sched, actions, mem_x, mem_a, M, torch.Generator().manual_seed(0), **kw)

    rec = Recorder(net)
    cached = run(rec)
    num_ar = 6 // sched.delta
    # the init stage and AR step 0 read the same references: one encode for both, then one per AR step
    assert (rec.encodes, rec.calls, rec.cached_calls) == (num_ar, sched.init_steps + num_ar * sched.substeps,
                                                          rec.calls)
    off = Recorder(net)
    torch.testing.assert_close(run(off, cache_memory=False), cached, **TOL)
    assert off.encodes == 0 and off.cached_calls == 0
    calls = []

    def counted(x, *a, **k):  # a plain callable (training/evaluate.py's wrapper) gets the raw memory
        calls.append(sorted(k))
        return net(x, *a, **k)

    torch.testing.assert_close(run(counted), cached, **TOL)
    assert calls and all(k == ["mem_actions", "mem_mask", "mem_x"] for k in calls)
    counted.encode_memory = net.encode_memory  # ... and the cache once it offers encode_memory
    calls.clear()
    torch.testing.assert_close(run(counted), cached, **TOL)
    assert calls and all(k == ["memory_cache"] for k in calls)
