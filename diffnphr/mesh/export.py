"""Meshes to files: GLB, OBJ or PLY with vertex colours, in the canonical frame (glTF's own: +Y up, front +Z)."""

from __future__ import annotations

from pathlib import Path

import trimesh

EXPORT_FORMATS: tuple[str, ...] = ("glb", "obj", "ply")


def export_mesh(mesh: trimesh.Trimesh, path: str | Path, file_format: str | None = None) -> Path:
    """Write ``mesh`` with its vertex colours as GLB, OBJ or PLY and return the path written.

    The format is ``file_format`` or else the file's suffix; missing folders are created.
    Coordinates are written as they are: the canonical frame (+y up, +z forward) is already
    glTF's. GLB and PLY store uint8 RGBA colours; OBJ writes ``v x y z r g b`` with r, g, b in
    [0, 1].
    """
    path = Path(path)
    chosen = (file_format if file_format is not None else path.suffix).lower().lstrip(".")
    if chosen not in EXPORT_FORMATS:
        named = f"format '{file_format}'" if file_format is not None else f"file name '{path.name}'"
        raise ValueError(
            f"Cannot export a mesh with the {named}: use a .glb, .obj or .ply file name "
            "or pass file_format='glb', 'obj' or 'ply'."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path, file_type=chosen)
    return path
