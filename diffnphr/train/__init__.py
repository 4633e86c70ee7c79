"""Training: the decoder and its factor map on fresh ICT-FaceKit heads with hair, latent fitting with the decoder
frozen, and the image encoder + diffusion model on renders.

* `loop`: the time-boxed, resumable loop both trainers run (`run_training`, `TimeBox`), its seeding;
* `config`: one frozen settings dataclass per trainer, stored as JSON in the run folder;
* `checkpoints`: run checkpoints that travel between short GPU commands; `log`: the JSON-lines log;
* `ema`: exponential moving averages of trained weights;
* `losses`: MonoNPHM's loss terms on a batch of heads;
* `decoder`: `train_decoder` and `export_decoder` (decoder, factor map, the split's latents);
* `fit`: `fit_heads` / `fit_latents`, latents of unseen heads with the decoder frozen;
* `reconstruction`: `train_reconstruction` and `export_reconstruction`, with its data
  (`reconstruction_data`: targets and render batches) and models (`reconstruction_models`).

Nothing here is imported by the app.
"""
