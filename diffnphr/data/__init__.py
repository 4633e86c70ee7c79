"""Training data made from ICT-FaceKit: heads, appearance, anchors and on-the-fly samples.

* `ict`: the archive loader (MonoNPHM's canonical frame); `ict_convert` rebuilds the archive
  from the official repository's OBJ files.
* `heads`: identity/expression coefficients, the closed surfaces every head shares;
  `expressions`: the realistic blendshape-weight sampler.
* `appearance`: procedural per-vertex colours per identity seed.
* `anchors`: the 65 MonoNPHM-style anchor vertices.
* `sampling`: batched torch training samples (surface, space, correspondences, anchors).
"""
