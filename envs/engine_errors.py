"""Errors the engine adapters (envs/dmlab.py, envs/minecraft.py) raise, so callers can tell them apart.

- `EngineMissing` (an ImportError): the engine is not installed on this machine. Retrying cannot help; the
  message says how to install it and which cluster node type has it (cluster.yaml).
- `EngineCrash` (a RuntimeError): the engine died or misbehaved mid-episode (socket timeout, broken pipe,
  Minecraft gone, DMLab advance error). The env is marked broken: `close()` it and build a new one (or call
  `reset()`, which rebuilds), drop the partial episode and retry. The original exception is chained.
"""
from __future__ import annotations


class EngineMissing(ImportError):
    """The game engine's Python package cannot be imported here; the message holds the install steps."""


class EngineCrash(RuntimeError):
    """The engine failed during reset/step; the env must be rebuilt (reset() does it) and the episode dropped."""
