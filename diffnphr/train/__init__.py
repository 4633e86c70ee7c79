"""Training: the decoder as an auto-decoder on ICT-FaceKit heads, and latent fitting with it frozen.

* `split`: the fixed, seeded identities × expressions of the decoder's data and the held-out identities;
* `losses`: MonoNPHM's loss terms on a batch of heads;
* `checkpoints`: run checkpoints that travel between short GPU commands;
* `decoder`: `train_decoder` (resumable, time-boxed) and `export_decoder` (weights + latents);
* `fit`: `fit_heads` / `fit_latents`, latents of unseen heads with the decoder frozen;
* `head_latents`: latents of a split's heads as files, and their normalisation statistics.

Nothing here is imported by the app.
"""
