"""diffnphr: one face photo in, a full 3D head out (1D-DiffNPHR on MonoNPHM latents)."""

__version__ = "0.1.0"
