# bench experiment: Inductor's random ops fall back to eager's (curand, 4 numbers a Philox call)
import os
if os.environ.get("FALLBACK_RANDOM") == "1":
    import torch._inductor.config as _c
    _c.fallback_random = True
