"""Game environments (gymnasium.Env) and the agents that drive them. No Ray, no Parquet, no torch here.

`make_env(name, **settings)` builds an env by name; `rollout(...)` plays one episode with an agent and returns
the per-episode arrays that become one shard row (see pipeline/schema.py for the column contract).
"""
