"""Meta-ARVDM schedules: window w, AR step Delta, input/output noise levels, sub-steps, reference policy.

The paper's Algorithm 1 is parameterised by (w, Delta, L_in, L_out, {R_i}); Requirement 1 says which choices give
a plausible AR generation. `ARSchedule` holds them and checks Requirement 1 when built, raising a ValueError that
names the violated clause and the first offending position (0-based) with its values:

    >>> ARSchedule(w=4, delta=1, levels_in=[2, 2, 3, 4], levels_out=[0, 1, 2, 3])
    ValueError: Requirement 1 (circularity) violated: levels_in[0]=2 != levels_out[0+delta=1]=1 ...

Noise levels live on an integer grid 0..num_levels (the paper's T; 0 = clean, num_levels = pure noise). The
sampler maps grid level l to diffusion timestep round(l * K / num_levels), so a grid of 16 levels over K = 1000
timesteps gives 16 DDIM steps per frame. Each AR step moves every frame down by the same amount
D = levels_in - levels_out (constant pace) in `substeps` sub-steps (M_ar of Eqn. 3.3): sub-step n takes frame i
from levels_in[i] - o_n to levels_in[i] - o_{n+1}, o_n = round(n D / M_ar).

Presets: `outpainting(w, steps)`, `fifo(w)`, `df_pyramid(w, steps_per_frame)`, `df_chunked(w, chunk, steps)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# ----------------------------------------------------------------------------------------------- references
@dataclass(frozen=True)
class LastFrames:
    """Reference policy R_i: the last `memory_length` clean frames known when the AR step starts.

    Frames are indexed in the order they became known: given (ground-truth) memory frames first, then the
    generated frames. `indices(num_known)` returns indices into that sequence; causality (Requirement 1) asks
    that every index is < num_known, i.e. R_i within [i] (the frames before the first frame being denoised).
    """

    memory_length: int

    def __post_init__(self):
        if self.memory_length < 0:
            raise ValueError(f"memory_length={self.memory_length}: must be >= 0")

    @property
    def size(self) -> int:
        """Number of reference slots passed to the denoiser (padding is masked out)."""
        return self.memory_length

    def indices(self, num_known: int) -> list[int]:
        return list(range(max(0, num_known - self.memory_length), num_known))


def check_causal(policy, num_known: int, ar_step: int | str = "?") -> list[int]:
    """The policy's indices for an AR step whose first denoised frame has index `num_known`; raises
    ValueError naming Requirement 1 (causality) when an index is not an already known frame."""
    idx = list(policy.indices(num_known))
    for j, r in enumerate(idx):
        if not 0 <= r < num_known:
            raise ValueError(
                f"Requirement 1 (causality) violated at AR step {ar_step}: reference {j} is frame {r}, but only "
                f"frames 0..{num_known - 1} are known before the first frame being denoised ({num_known}); "
                f"R_i must be a subset of [i]")
    if len(idx) > policy.size:
        raise ValueError(f"reference policy returned {len(idx)} frames, more than its size {policy.size}")
    return idx


# ----------------------------------------------------------------------------------------------- schedule
@dataclass
class ARSchedule:
    """(w, Delta, L_in, L_out) of Algorithm 1 plus the sub-step discretisation of Eqn. 3.3.

    Args:
        w: effective window size (frames denoised together in one AR step).
        delta: AR step size (clean frames produced per AR step).
        levels_in: L^I, w ints in [0, num_levels], input noise level of each window position.
        levels_out: L^O, w ints, output noise level of each position.
        num_levels: T, the pure-noise level of the grid (default max(levels_in)).
        substeps: M_ar, denoiser calls per AR step (default D = levels_in - levels_out, one grid level each).
        init_steps: M_init, denoising steps of the initialization stage (Alg. 2; default num_levels).
        name: preset name, for printing.
    """

    w: int
    delta: int
    levels_in: list[int]
    levels_out: list[int]
    num_levels: int | None = None
    substeps: int | None = None
    init_steps: int | None = None
    name: str = "custom"
    _offsets: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.levels_in = [int(v) for v in self.levels_in]
        self.levels_out = [int(v) for v in self.levels_out]
        if self.num_levels is None:
            self.num_levels = max(self.levels_in) if self.levels_in else 0
        self.validate()
        pace = self.levels_in[0] - self.levels_out[0]
        if self.substeps is None:
            self.substeps = pace
        if not 1 <= self.substeps <= pace:
            raise ValueError(f"substeps={self.substeps}: must be in [1, {pace}] (levels drop by {pace} per AR step)")
        if self.init_steps is None:
            self.init_steps = self.num_levels
        if self.init_steps < 1:
            raise ValueError(f"init_steps={self.init_steps}: must be >= 1")
        self._offsets = [round(n * pace / self.substeps) for n in range(self.substeps + 1)]

    # -- Requirement 1 ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the shape of the schedule and Requirement 1 (paper Sec. 3) clause by clause."""
        w, d, T, li, lo = self.w, self.delta, self.num_levels, self.levels_in, self.levels_out
        if w < 1:
            raise ValueError(f"w={w}: must be >= 1")
        if not 1 <= d <= w:
            raise ValueError(f"delta={d}: must be in [1, w={w}]")
        if len(li) != w or len(lo) != w:
            raise ValueError(f"levels_in has {len(li)} and levels_out {len(lo)} entries; both need w={w}")
        if T < 1:
            raise ValueError(f"num_levels={T}: must be >= 1")
        for name, lv in (("levels_in", li), ("levels_out", lo)):
            for i, v in enumerate(lv):
                if not 0 <= v <= T:
                    raise ValueError(f"{name}[{i}]={v}: noise levels must be in [0, num_levels={T}]")

        def fail(clause: str, detail: str):
            raise ValueError(f"Requirement 1 ({clause}) violated: {detail} "
                             f"[w={w}, delta={d}, levels_in={li}, levels_out={lo}, T={T}]")

        # (Monotonicity) t^I_{i-1} <= t^I_i, t^O_{i-1} <= t^O_i, t^O_i < t^I_i.
        for i in range(w):
            if i > 0 and li[i - 1] > li[i]:
                fail("monotonicity", f"levels_in[{i - 1}]={li[i - 1]} > levels_in[{i}]={li[i]}")
            if i > 0 and lo[i - 1] > lo[i]:
                fail("monotonicity", f"levels_out[{i - 1}]={lo[i - 1]} > levels_out[{i}]={lo[i]}")
            if not lo[i] < li[i]:
                fail("monotonicity", f"levels_out[{i}]={lo[i]} is not < levels_in[{i}]={li[i]}")
        # (0-T boundary) t^I_i = T for i >= w - Delta + 1, t^O_i = 0 for i <= Delta (1-based in the paper).
        for i in range(w - d, w):
            if li[i] != T:
                fail("0-T boundary", f"levels_in[{i}]={li[i]} != T={T} (the last delta={d} inputs are pure noise)")
        for i in range(d):
            if lo[i] != 0:
                fail("0-T boundary", f"levels_out[{i}]={lo[i]} != 0 (the first delta={d} outputs are clean)")
        # (Circularity) t^I_i = t^O_{Delta+i} for i in [w - Delta].
        for i in range(w - d):
            if li[i] != lo[i + d]:
                fail("circularity", f"levels_in[{i}]={li[i]} != levels_out[{i}+delta={i + d}]={lo[i + d]}")
        # (Constant pace) t^O_i - t^I_i = t^O_j - t^I_j.
        pace = li[0] - lo[0]
        for i in range(w):
            if li[i] - lo[i] != pace:
                fail("constant pace", f"levels_in[{i}]-levels_out[{i}]={li[i] - lo[i]} != "
                                      f"levels_in[0]-levels_out[0]={pace}")

    def validate_reference(self, policy, num_known_start: int = 0, num_steps: int = 64) -> None:
        """(Causality) check `policy` over `num_steps` AR steps, the first starting with `num_known_start`
        clean frames known (given memory); raises ValueError naming the clause and the AR step."""
        for s in range(num_steps):
            check_causal(policy, num_known_start + s * self.delta, s)

    # -- sub-step discretisation (Eqn. 3.3) ---------------------------------------------------------------
    def substep_levels(self) -> list[tuple[list[int], list[int]]]:
        """[(levels_from, levels_to)] per sub-step n = 0..M_ar-1, each a list of w grid levels."""
        o = self._offsets
        return [([v - o[n] for v in self.levels_in], [v - o[n + 1] for v in self.levels_in])
                for n in range(self.substeps)]

    def describe(self) -> str:
        return (f"{self.name}: w={self.w} delta={self.delta} T={self.num_levels} substeps={self.substeps} "
                f"init_steps={self.init_steps} L_in={self.levels_in} L_out={self.levels_out}")


# ----------------------------------------------------------------------------------------------- presets
def outpainting(w: int, steps: int) -> ARSchedule:
    """Outpainting (paper Sec. 3): Delta = w, every frame T -> 0 inside one AR step of `steps` sub-steps."""
    return ARSchedule(w, w, [steps] * w, [0] * w, num_levels=steps, substeps=steps, init_steps=steps,
                      name="outpainting")


def df_chunked(w: int, chunk: int, steps_per_chunk: int, name: str = "df_chunked") -> ARSchedule:
    """Staggered chunks (diffusion forcing style): Delta = chunk, w/chunk blocks one noise band apart; each
    AR step lowers every frame by one band (`steps_per_chunk` sub-steps) and emits one clean chunk.
    Block j (frames j*chunk .. j*chunk+chunk-1) goes from (j+1)*s to j*s, T = (w/chunk) * s."""
    if chunk < 1 or w % chunk:
        raise ValueError(f"chunk={chunk}: must divide w={w}")
    s = steps_per_chunk
    blocks = [i // chunk for i in range(w)]
    return ARSchedule(w, chunk, [(b + 1) * s for b in blocks], [b * s for b in blocks],
                      num_levels=(w // chunk) * s, substeps=s, init_steps=(w // chunk) * s, name=name)


def df_pyramid(w: int, steps_per_frame: int) -> ARSchedule:
    """Diffusion forcing's pyramid scheduling as Meta-ARVDM: Delta = 1, frame i (0-based) goes from
    (i+1)s to i*s in s = `steps_per_frame` sub-steps, T = w*s (each frame s grid levels behind the previous)."""
    return df_chunked(w, 1, steps_per_frame, name="df_pyramid")


def fifo(w: int) -> ARSchedule:
    """FIFO-Diffusion (Kim et al. 2024; paper Sec. 3): Delta = 1, staircase levels (0, 1, .., w-1) -> (1, .., w)
    on a grid of T = w levels, one denoiser call per AR step (the queue moves one level per call)."""
    return df_chunked(w, 1, 1, name="fifo")


PRESETS = ("outpainting", "fifo", "df_pyramid", "df_chunked")


def build_schedule(name: str, w: int, steps: int, chunk: int | None = None) -> ARSchedule:
    """A preset by name: `steps` is the outpainting step count, or the sub-steps per AR step otherwise
    (fifo ignores it). chunk defaults to w // 2 for df_chunked."""
    if name == "outpainting":
        return outpainting(w, steps)
    if name == "fifo":
        return fifo(w)
    if name == "df_pyramid":
        return df_pyramid(w, steps)
    if name == "df_chunked":
        return df_chunked(w, chunk or max(1, w // 2), steps)
    raise ValueError(f"schedule preset {name!r}: valid values are {PRESETS}")
