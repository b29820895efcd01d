"""MineRL mission specs for envs/minecraft.py (imports minerl: import this module only where MineRL is installed).

`ExploreSpec` is TECO's SimpleExplore (wilson1yan/collect-minecraft env.py) for MineRL 0.4.4: a
SimpleEmbodimentEnvSpec (simple keyboard + camera actions, pov observation at `resolution`), a default world
forced to one biome (`biome`, Minecraft biome id; TECO: 6 swampland) with caves on and structures/lakes off
(customized generator options), no passage of time, mob spawning on, no rewards, no quit producers. We add
handlers.ObservationFromCurrentLocation() so every observation carries obs["location_stats"] (xpos, ypos, zpos,
pitch, yaw, ...): real poses.

`ExploreSpec10` is the same mission on MineRL 1.0's HumanControlEnvSpec (640x360 human keyboard/mouse actions).
"""
from __future__ import annotations

import json

from minerl.herobraine.env_specs.simple_embodiment import SimpleEmbodimentEnvSpec
from minerl.herobraine.hero import handlers

NAME = "MemvidExplore-v0"


def generator_options(biome: int, caves: bool) -> str:
    """Minecraft 'customized' world JSON (ChunkProviderSettings keys); keys left out keep their defaults."""
    opts = {"useCaves": bool(caves), "useRavines": bool(caves), "useStrongholds": False, "useVillages": False,
            "useMineShafts": False, "useTemples": False, "useMonuments": False, "useWaterLakes": False,
            "useLavaLakes": False}
    if biome >= 0:
        opts["fixedBiome"] = int(biome)
    return json.dumps(opts, sort_keys=True)


class _ExploreMission:
    """The mission parts shared by both MineRL versions (mixin before the MineRL base class)."""

    biome: int
    caves: bool

    def create_observables(self) -> list:
        return super().create_observables() + [handlers.ObservationFromCurrentLocation()]

    def create_rewardables(self) -> list:
        return []

    def create_agent_start(self) -> list:
        return []

    def create_agent_handlers(self) -> list:
        return []

    def create_server_world_generators(self) -> list:
        return [handlers.DefaultWorldGenerator(force_reset=True,
                                               generator_options=generator_options(self.biome, self.caves))]

    def create_server_quit_producers(self) -> list:
        return []

    def create_server_decorators(self) -> list:
        return []

    def create_server_initial_conditions(self) -> list:
        return [handlers.TimeInitialCondition(allow_passage_of_time=False),
                handlers.SpawningInitialCondition(allow_spawning=True)]

    def determine_success_from_rewards(self, rewards: list) -> bool:
        return False

    def is_from_folder(self, folder: str) -> bool:
        return False

    def get_docstring(self) -> str:
        return "memvid explore mission (TECO SimpleExplore + ObservationFromCurrentLocation)"


class ExploreSpec(_ExploreMission, SimpleEmbodimentEnvSpec):
    """MineRL 0.4.4 spec; resolution is the square pov size in pixels."""

    def __init__(self, resolution: int = 64, biome: int = 6, caves: bool = True, name: str = NAME):
        self.biome, self.caves = int(biome), bool(caves)  # before super(): EnvSpec.__init__ builds the handlers
        super().__init__(name, resolution=(int(resolution), int(resolution)))


def explore_spec_10(width: int = 640, height: int = 360, biome: int = 6, caves: bool = True, name: str = NAME):
    """MineRL 1.0 spec (HumanControlEnvSpec, 640x360 by default); only importable where MineRL 1.0 is installed."""
    from minerl.herobraine.env_specs.human_controls import HumanControlEnvSpec

    class ExploreSpec10(_ExploreMission, HumanControlEnvSpec):
        def __init__(self):
            self.biome, self.caves = int(biome), bool(caves)
            super().__init__(name, resolution=(int(width), int(height)))

    return ExploreSpec10()
