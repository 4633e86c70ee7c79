"""Procedural hair and torso: fixed topology, seeded styles, hair off the face, hidden when absent,
long hair below the chin, a torso joined to the neck cut with shoulders and clothes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffnphr.data.hair import HairModel
from diffnphr.data.heads import head_vertices
from diffnphr.data.ict import load_ict
from diffnphr.data.torso import TorsoModel
from diffnphr.render import vertex_normals


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def heads(model):
    rng = np.random.default_rng(0)
    return torch.tensor(
        np.stack([head_vertices(model, rng.normal(size=model.identity_modes.shape[0])) for _ in range(24)])
    )


@pytest.fixture(scope="module")
def hair(model):
    return HairModel(model)


@pytest.fixture(scope="module")
def torso(model):
    return TorsoModel(model)


def _shell_offsets(hair, heads, vertices):
    """Signed distance (B, Vs) of each shell vertex from its skin vertex along the skin normal."""
    normals = vertex_normals(heads, hair._normal_faces)[:, hair.shell_rows]
    shell = vertices[:, : len(hair.shell_rows)]
    return ((shell - heads[:, hair.shell_rows]) * normals).sum(dim=-1)


def _triangle_areas(vertices, faces):
    corners = vertices[:, faces]
    return 0.5 * torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]).norm(
        dim=-1
    )


def test_hair_meshes_share_one_topology_and_are_seeded(hair, heads):
    styles = hair.sample_styles(24, torch.Generator().manual_seed(1))
    again = hair.sample_styles(24, torch.Generator().manual_seed(1))
    torch.testing.assert_close(styles.hairline, again.hairline, rtol=0, atol=0)
    vertices, faces, colours = hair.mesh(heads, styles)
    assert vertices.shape == (24, hair.num_vertices, 3) and colours.shape == vertices.shape
    assert faces.dtype == torch.long and faces.min() == 0 and faces.max() == hair.num_vertices - 1
    assert colours.min() >= 0 and colours.max() <= 1
    assert torch.isfinite(vertices).all()
    other_faces = hair.mesh(heads[:3], hair.sample_styles(3, torch.Generator().manual_seed(2)))[1]
    assert torch.equal(faces, other_faces)


def test_hair_varies_from_bald_to_long(hair, heads):
    styles = hair.sample_styles(24, torch.Generator().manual_seed(3))
    vertices, _, _ = hair.mesh(heads, styles)
    offsets = _shell_offsets(hair, heads, vertices)
    covered = (offsets > 0.001).float().mean(dim=1)
    assert covered.min() < 0.2 and covered.max() > 0.5
    lowest = vertices[:, len(hair.shell_rows) :, 1].amin(dim=1)
    assert (lowest < -0.4).any() and (lowest > 0.3).any()  # some shoulder-length, some short styles


def test_missing_hair_hides_inside_the_skin(hair, heads):
    styles = hair.sample_styles(4, torch.Generator().manual_seed(4))
    bald = replace(styles, hairline=torch.full_like(styles.hairline, 9.0), length=torch.full_like(styles.length, 9.0))
    vertices, faces, _ = hair.mesh(heads[:4], bald)
    offsets = _shell_offsets(hair, heads[:4], vertices)
    assert offsets.max() < -0.007 and offsets.min() > -0.009  # 2 mm inside everywhere
    curtain_faces = faces[len(hair.shell_faces) :] - len(hair.shell_rows)
    assert _triangle_areas(vertices[:, len(hair.shell_rows) :], curtain_faces).max() < 1e-9  # folded away


def test_hair_thickness_and_rim(hair, heads):
    styles = hair.sample_styles(24, torch.Generator().manual_seed(5))
    offsets = _shell_offsets(hair, heads, hair.mesh(heads, styles)[0])
    assert offsets.max() < 0.04 * 1.4 / 0.25 * 1.05  # at most 4 cm, lumps included
    assert torch.all(offsets.amax(dim=1) <= styles.thickness * 1.4 + 1e-4)
    assert offsets[:, hair._rim].max() < -0.007  # the shell's outline always stays inside the skin


def test_hair_never_covers_the_face(model, hair, heads):
    """No visible hair vertex lies in front of the face between the brows and the chin."""
    styles = hair.sample_styles(24, torch.Generator().manual_seed(6))
    vertices, _, _ = hair.mesh(heads, styles)
    offsets = _shell_offsets(hair, heads, vertices)
    visible = torch.cat([offsets > 0, torch.ones(24, vertices.shape[1] - offsets.shape[1], dtype=torch.bool)], dim=1)
    landmarks = heads[:, torch.as_tensor(np.array(model.landmarks_68))]
    brows = landmarks[:, 17:27, 1].amin(dim=1)  # a fringe may reach the brows, not below
    chin = landmarks[:, 8, 1]
    eyes = landmarks[:, [36, 45], 0].abs().amax(dim=1)
    front = landmarks[:, [36, 45], 2].amin(dim=1) - 0.04
    x, y, z = vertices.unbind(dim=-1)
    in_face = (y < brows[:, None]) & (y > chin[:, None]) & (x.abs() < eyes[:, None]) & (z > front[:, None])
    assert not (in_face & visible).any()


def test_hair_takes_the_given_colours(hair, heads):
    colours = torch.tensor([[0.5, 0.05, 0.02]]).repeat(24, 1)
    styles = hair.sample_styles(24, torch.Generator().manual_seed(7), colours)
    reddish = (styles.colour[:, 0] > 3 * styles.colour[:, 2]).float().mean()
    assert reddish > 0.7
    with pytest.raises(ValueError, match="colours"):
        hair.sample_styles(3, torch.Generator(), torch.zeros(2, 3))


def test_bad_heads_are_refused(hair, torso, heads):
    styles = hair.sample_styles(2, torch.Generator())
    with pytest.raises(ValueError, match="head_vertices"):
        hair.mesh(heads[:2, :100], styles)
    with pytest.raises(ValueError, match="styles"):
        hair.mesh(heads[:3], styles)
    with pytest.raises(ValueError, match="skin_colours"):
        torso.mesh(heads[:2], torso.sample_styles(2, torch.Generator()), torch.zeros(3, 3))


def test_torso_joins_the_neck_cut_and_has_shoulders(model, torso, heads):
    styles = torso.sample_styles(24, torch.Generator().manual_seed(8))
    skin = torch.tensor([[0.8, 0.6, 0.5]]).repeat(24, 1)
    vertices, faces, colours = torso.mesh(heads, styles, skin)
    assert vertices.shape == (24, torso.num_vertices, 3) and colours.shape == vertices.shape
    assert faces.min() == 0 and faces.max() == torso.num_vertices - 1
    assert colours.min() >= 0 and colours.max() <= 1
    loop = heads[:, torch.as_tensor(np.array(model.neck_boundary_loop))]
    first_ring = vertices[:, : len(model.neck_boundary_loop) * 3 : 3]
    torch.testing.assert_close(first_ring, loop)  # no gap between head and torso
    torso_part = vertices[:, : torso.num_torso_vertices]
    assert torch.all(torso_part[..., 0].abs().amax(dim=1) > 0.6)  # shoulders wider than 15 cm each side
    assert torch.all(torso_part[..., 1].amin(dim=1) < -2.0)  # reaches below any frame
    bottom = colours[:, torso.num_torso_vertices - first_ring.shape[1] * 3 : torso.num_torso_vertices]
    assert ((bottom - skin[:, None]).abs().amax(dim=-1) > 0.02).float().mean() > 0.9  # clothes below


def test_necklines_decide_what_is_skin_and_what_is_clothes(torso, heads):
    styles = torso.sample_styles(2, torch.Generator().manual_seed(9))
    skin = torch.tensor([[0.8, 0.6, 0.5]]).repeat(2, 1)
    neckline = styles.neckline.clone()
    neckline[0, :3] = -9.0  # nothing clothed
    neckline[1, :3] = torch.tensor([-0.42, -0.41, -0.4])  # a turtleneck
    neckline[:, 4] = 0.03
    vertices, _, colours = torso.mesh(heads[:2], replace(styles, neckline=neckline), skin)
    torch.testing.assert_close(
        colours[0, : torso.num_torso_vertices], skin[0].expand(torso.num_torso_vertices, 3), atol=1e-5, rtol=0
    )
    shell = vertices[:, torso.num_torso_vertices :]
    lifted = (shell - heads[:2, torso._shell_rows]).norm(dim=-1)
    assert lifted[0].max() < 0.0081  # bare: the clothes shell hides 2 mm inside the skin
    low_neck = (heads[1, torso._shell_rows, 1] < -0.5) & (torso._free > 0) & ~torso._hidden_rim  # not its outline
    assert (lifted[1, low_neck] > 0.025).float().mean() > 0.9  # the turtleneck stands off the neck
