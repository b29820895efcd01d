"""Overhead of the engine adapters over the bare engine step, with the test doubles as engines.

    .venv/bin/python bench/adapters.py              # DMLab (double of deepmind_lab)
    .venv-minerl/bin/python bench/adapters.py       # DMLab + MineRL (real minerl 0.4.4 fake env)

bare DMLab step   = what any caller must do per action: lab.step(np.intc action, num_steps=4), is_running(),
                    observations() (the frame).
adapter step      = envs.dmlab.DMLabEnv.step(a): the same plus pose/info assembly and error wrapping.
bare MineRL step  = fake_env.step(action dict) (real MineRL translation + handlers, scripted Malmo data).
adapter step      = envs.minecraft.MinecraftEnv.step(a): the same plus action dict copy, pose conversion.
Floor (issue 4): adapter / bare <= 1.05. Min CPU time of `repeats` interleaved runs of `steps` steps each, same
action sequence.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(bare, adapter, repeats: int) -> tuple[float, float]:
    """Min CPU seconds of each, runs interleaved (bare, adapter, bare, ...) so machine load hits both alike;
    CPU time (process_time) rather than wall time, as the 2-core machine is shared."""
    times = {bare: [], adapter: []}
    for _ in range(repeats):
        for fn in (bare, adapter):
            t0 = time.process_time()
            fn()
            times[fn].append(time.process_time() - t0)
    return min(times[bare]), min(times[adapter])


def bench_dmlab(steps: int, repeats: int, resolution: int) -> tuple[float, float]:
    import tests.fake_deepmind_lab as fake
    from envs.dmlab import OBSERVATIONS, DMLabEnv

    acts = np.random.default_rng(0).integers(0, 3, steps)
    long_episode = {"episodeLengthSeconds": "36000"}  # never ends within the benchmark
    env = DMLabEnv(resolution=resolution, lab_module=fake.__name__, level_options=long_episode)
    table = env._actions
    lab = fake.Lab("demos/random_maze", list(OBSERVATIONS),
                   {"width": str(resolution), "height": str(resolution), "fps": "30", **long_episode})

    def bare():
        lab.reset(seed=1)
        for a in acts:
            lab.step(table[a], num_steps=4)
            if lab.is_running():
                lab.observations()

    def adapter():
        env.reset(seed=1)
        for a in acts:
            env.step(int(a))

    b, a = best_of(bare, adapter, repeats)
    return b / steps, a / steps


class NullLab:
    """A deepmind_lab.Lab that does no work (cached observations): isolates the adapter's own cost per step."""

    def __init__(self, observations: dict):
        self._obs = observations

    def step(self, action, num_steps=1):
        return 0.0

    def is_running(self):
        return True

    def observations(self):
        return dict(self._obs)

    def close(self):
        return True


def adapter_overhead_dmlab(steps: int, repeats: int, resolution: int) -> float:
    """Seconds per step the adapter adds on top of the engine calls (NullLab engine, so no noise from rendering)."""
    import tests.fake_deepmind_lab as fake
    from envs.dmlab import DMLabEnv

    env = DMLabEnv(resolution=resolution, lab_module=fake.__name__)
    env.reset(seed=1)
    null = NullLab(env._lab.observations())
    env._lab, table = null, env._actions
    acts = np.random.default_rng(0).integers(0, 3, steps)

    def bare():
        for a in acts:
            null.step(table[a], num_steps=4)
            if null.is_running():
                null.observations()

    def adapter():
        for a in acts:
            env.step(int(a))

    b, a = best_of(bare, adapter, repeats)
    return (a - b) / steps


def bench_minecraft(steps: int, repeats: int, resolution: int) -> tuple[float, float]:
    from envs.minecraft import MinecraftEnv

    factory = "tests.with_minerl.fake_minerl:make_fake"
    acts = np.random.default_rng(0).integers(0, 3, steps)
    env = MinecraftEnv(resolution=resolution, engine_factory=factory)
    from envs.minecraft_spec import ExploreSpec
    from tests.with_minerl.fake_minerl import make_fake

    engine = make_fake(ExploreSpec(resolution))
    commands = env._engine_actions

    def bare():
        engine.seed(1)
        engine.reset()
        for a in acts:
            engine.step(commands[a])

    def adapter():
        env.reset(seed=1)
        for a in acts:
            env.step(int(a))

    b, a = best_of(bare, adapter, repeats)
    return b / steps, a / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # MineRL logs a line per missing location stat
    rows = [("dmlab", *bench_dmlab(args.steps, args.repeats, args.resolution))]
    try:
        import minerl  # noqa: F401

        rows.append(("minecraft", *bench_minecraft(args.steps, args.repeats, args.resolution)))
    except ImportError:
        print("minecraft: skipped (minerl not installed here; run with .venv-minerl/bin/python)")
    overhead = adapter_overhead_dmlab(args.steps, args.repeats, args.resolution)
    print(f"dmlab adapter's own work (NullLab engine): {overhead * 1e6:.1f} us/step = "
          f"{overhead / rows[0][1] * 100:.1f}% of the double's bare step")
    ok = True
    for name, bare, adapter in rows:
        ratio = adapter / bare
        ok &= ratio <= 1.05
        print(f"{name:10s} bare {bare * 1e6:8.1f} us/step  adapter {adapter * 1e6:8.1f} us/step  "
              f"ratio {ratio:.3f}  overhead {(adapter - bare) * 1e6:+.1f} us  {'OK' if ratio <= 1.05 else 'OVER 1.05'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
