"""Training data made from ICT-FaceKit: heads with hair, appearance, anchors, on-the-fly samples and renders.

* `ict`: the archive loader (MonoNPHM's canonical frame); `ict_convert` rebuilds the archive
  from the official repository's OBJ files.
* `heads`: identity/expression coefficients, the closed skin, eyeball and teeth surfaces every
  head shares; `expressions`: the realistic blendshape-weight sampler.
* `colour`, `fields`: sRGB conventions and the hair palette; smooth steps and 2D distances.
* `appearance`: procedural per-vertex colours per identity seed (skin, lips, brows, eyes, mouth).
* `hair_styles`, `hair_regions`, `hair`: hair and beard styles, where they grow, and their closed
  volumes (displaced skin, a long-hair slab, a bun).
* `factors`: `HeadFactors`, everything that makes one random head, and `sample_head_factors`.
* `head_geometry`: `HeadGeometry`, the union of a head's closed parts and which triangles bound it.
* `anchors`: the 65 MonoNPHM-style anchor vertices.
* `samples`, `sampling`: batched torch training samples (surface, space, correspondences, anchors).
* `scenes`, `renders`: what is random about a training photo, and `HeadRenderer` (pose, camera,
  light, crop by the app's rule), with `torso` (procedural meshes over shells of the skin,
  `skin_shell`), `backgrounds` (natural-image patches and procedural ones) and `augment`
  (camera degradations).
"""
