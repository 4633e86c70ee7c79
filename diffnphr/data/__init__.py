"""Training data made from ICT-FaceKit: heads, appearance, anchors, on-the-fly samples and renders.

* `ict`: the archive loader (MonoNPHM's canonical frame); `ict_convert` rebuilds the archive
  from the official repository's OBJ files.
* `heads`: identity/expression coefficients, the closed surfaces every head shares;
  `expressions`: the realistic blendshape-weight sampler.
* `appearance`: procedural per-vertex colours per identity seed.
* `anchors`: the 65 MonoNPHM-style anchor vertices.
* `sampling`: batched torch training samples (surface, space, correspondences, anchors).
* `renders`: `HeadRenderer`, training photos of heads (pose, camera, light, crop by the app's rule),
  with `hair` and `torso` (procedural meshes over shells of the skin, `skin_shell`),
  `backgrounds` (natural-image patches and procedural ones) and `augment` (camera degradations).
"""
