"""companion: the PyTorch package of the book "From Autoencoders to Diffusion Models"."""

from .run.profiles import PROFILES, Profile, get_profile
from .run.progress import progress
from .run.runtime import describe, get_device, seed_everything, setup, timed

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "Profile", "get_profile", "progress", "describe", "get_device",
    "seed_everything", "setup", "timed", "__version__",
]
