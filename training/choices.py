"""The names every config chooses from, in one place (no torch, no Ray: tools and the sweep import it cheaply).

training.models builds the architectures behind MODEL_SIZES and checks MEMORIES / COMPRESSIONS; training.config,
evaluate, the demo and the sweep's grid take their flag choices from here.
"""
MODEL_SIZES = ("tiny", "small", "base", "paper")         # denoiser size presets (training.models.PRESETS)
MEMORIES = ("none", "prepend", "concat", "cross_attn")    # how past frames enter the denoiser (paper Fig. 5)
STRUCTURES = MEMORIES[1:]                                 # the memory structures proper (a sweep's rows)
COMPRESSIONS = ("none", "joint", "modulated")             # memory compression (paper App. G)
SCHEDULES = ("sigmoid", "cosine")                         # noise schedules (training.diffusion)
BACKENDS = ("ray", "local")                               # where training runs
