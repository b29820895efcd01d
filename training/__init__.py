"""Denoisers, memory modules, diffusion, the Meta-ARVDM sampler (pure torch), and the Ray Train / evaluation entry
points. `diffusion`, `models`, `sampler`, `schedules` and `cost` never import Ray (they run on GPU machines without it).
"""
