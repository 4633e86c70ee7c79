"""Signed distance field -> coloured triangle mesh, and export to GLB / OBJ / PLY.

`grid` evaluates the SDF on the extraction grid (dense, or a narrow band refined level by level),
`marching` runs marching cubes and welds the blocks into one mesh, `extract` ties them together
with the vertex colours (`extract_mesh_with_stats`, the step the pipeline runs) and `export` writes files.
"""

from diffnphr.mesh.export import EXPORT_FORMATS, export_mesh
from diffnphr.mesh.extract import METHODS, MeshExtraction, extract_mesh, extract_mesh_with_stats

__all__ = ["EXPORT_FORMATS", "METHODS", "MeshExtraction", "export_mesh", "extract_mesh", "extract_mesh_with_stats"]
