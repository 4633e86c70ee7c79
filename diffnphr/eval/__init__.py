"""Evaluation: how close decoded and reconstructed heads come to the ground-truth ICT heads, in mm.

* `metrics`: surface sampling, Chamfer-L1, normal consistency, F-score, the face region;
* `heads`: ground-truth heads and the comparison every evaluation shares;
* `decoder`: `eval decoder`, the decoder against its training and fitted held-out heads;
* `reconstruction/`: `eval reconstruction`, photos (renders) → every method → meshes against ground truth;
* `crops`: `eval crops`, the training crop rule against the app's detector crops.

Nothing here is imported by the app.
"""
