"""`eval reconstruction`: held-out renders → every method → meshes against ground truth.

`renders` (the evaluation set) → `methods` (typed methods and the models they read) → `work`
(the per-render loop) with `cache` (resumable results) → `report` and `figures`; `run` ties them
together (`evaluate_reconstruction`); `landmarks` is the landmark baseline's CPU phase.
"""
