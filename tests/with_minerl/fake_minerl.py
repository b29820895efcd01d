"""MineRL's own fake env (minerl.env._fake._FakeSingleAgentEnv) fed with scripted Malmo data.

Only `_get_fake_malmo_data` is overridden: everything else (mission XML, seeding, action -> Malmo command
translation, observation handlers incl. ObservationFromCurrentLocation) is the real MineRL 0.4.4 code. The
scripted world walks a seeded path (position and yaw change every tick) and paints frames from the pose, so
frames and poses vary and depend on the seed. `make_fake(spec)` is the adapter's engine_factory;
`make_crashing(spec)` breaks its pipe on the 4th tick after reset, as a dying Minecraft does.
"""
from __future__ import annotations

import numpy as np
from minerl.env._fake import _FakeSingleAgentEnv


class ScriptedFakeEnv(_FakeSingleAgentEnv):
    crash_at_tick: int | None = None

    def _get_fake_malmo_data(self) -> dict:
        if self._seed is not None or not hasattr(self, "_sim"):  # reset() peeks while its seed is still set
            rng = np.random.default_rng(self._seed or 0)
            self._sim = {"tick": 0, "x": float(rng.uniform(-100, 100)), "z": float(rng.uniform(-100, 100)),
                         "yaw": float(rng.uniform(-180, 180)), "turn": float(rng.choice([-20.0, 0.0, 20.0])),
                         "rng": rng}
        s = self._sim
        if self.crash_at_tick is not None and s["tick"] == self.crash_at_tick:
            raise BrokenPipeError(32, "Broken pipe (fake Minecraft died)")
        if s["tick"] % 5 == 0:
            s["turn"] = float(s["rng"].choice([-20.0, 0.0, 0.0, 0.0, 20.0]))
        s["yaw"] = (s["yaw"] + s["turn"] + 180.0) % 360.0 - 180.0
        s["x"] -= np.sin(np.radians(s["yaw"])) * 0.2
        s["z"] += np.cos(np.radians(s["yaw"])) * 0.2
        s["tick"] += 1
        h, w = self.task.resolution[1], self.task.resolution[0]
        shade = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
        colour = np.array([(s["yaw"] + 180) / 360, (s["x"] % 10) / 10, (s["z"] % 10) / 10])
        pov = (255 * shade * colour).astype(np.uint8)
        pov[: h // 4] = (100, 150, 255)  # sky at the top of the upright frame
        return {"pov": pov,  # upright: the fake env flips it (pov[::-1]) and the POV handler flips it back
                "xpos": s["x"], "ypos": 64.0, "zpos": s["z"], "pitch": 0.0, "yaw": s["yaw"],
                "biome_id": 6, "light_level": 15, "sun_brightness": 0.9, "sky_light_level": 0.7, "can_see_sky": 1,
                "biome_rainfall": 0.9, "biome_temperature": 0.8, "is_raining": 0, "sea_level": 63}


class CrashingFakeEnv(ScriptedFakeEnv):
    crash_at_tick = 4


def make_fake(spec) -> ScriptedFakeEnv:
    return ScriptedFakeEnv(env_spec=spec)


def make_crashing(spec) -> CrashingFakeEnv:
    return CrashingFakeEnv(env_spec=spec)
