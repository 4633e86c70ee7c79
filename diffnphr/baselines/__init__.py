"""Baselines the diffusion model is evaluated against (`python -m diffnphr eval reconstruction`).

* `regression`: the same encoder + an MLP straight to the latent (`LatentRegressor`);
* `neighbours`: the training latent whose render embedding is closest;
* `landmarks`: ridge regression from MediaPipe Face Mesh landmarks to the latent.

The mean latent needs no module (`LatentDiffusion.data_mean`). Nothing here is imported by the app.
"""
