"""The heads both training and evaluation read: the fixed split of identities × expressions, and their latents.

* `split`: `HeadSplit`, the seeded identities (training and held out) with their expression and
  appearance draws, as files beside the weights (`split.json` + `heads.safetensors`);
* `latents`: `SplitLatents`, the MonoNPHM codes of a split's heads (the decoder's codebooks, or
  latents fitted to the held-out identities), and the statistics the diffusion model normalises with.
"""
