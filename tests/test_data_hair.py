"""Hair, beard and torso: seeded styles of every kind, hair and beard as closed volumes of real thickness
(displaced skin, a closed curtain slab, a bun), nothing when a style has none, hair off the face, beards off
the lips, a torso joined to the neck cut with shoulders and clothes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from diffnphr.data.hair import HairModel
from diffnphr.data.hair_styles import CURTAIN_TOP, HAIR_KINDS, NO_HAIR, sample_hair_styles
from diffnphr.data.heads import head_surface, head_vertices
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


def _offsets(hair, heads, styles):
    """Distance (B, Vr) each hair-carrying skin vertex moved out along its normal."""
    on = hair.on_heads(heads, styles)
    normals = vertex_normals(heads, hair._normal_faces)[:, hair.rows]
    return ((on.vertices - heads)[:, hair.rows] * normals).sum(dim=-1), on


def _styles(count, seed, **changes):
    return replace(sample_hair_styles(count, torch.Generator().manual_seed(seed)), **changes)


def test_styles_are_seeded_and_cover_every_kind():
    styles = sample_hair_styles(400, torch.Generator().manual_seed(1))
    again = sample_hair_styles(400, torch.Generator().manual_seed(1))
    for name, value in styles.tensors().items():
        torch.testing.assert_close(value, again.tensors()[name], rtol=0, atol=0, msg=name)
    assert set(styles.kind.tolist()) == set(range(len(HAIR_KINDS)))
    bald = styles.kind == HAIR_KINDS.index("bald")
    assert torch.all(styles.thickness[bald] == 0) and torch.all(styles.thickness[~bald] > 0)
    long_hair = styles.kind == HAIR_KINDS.index("long")
    assert torch.all((styles.length < CURTAIN_TOP) == long_hair)
    assert torch.all((styles.bun[:, 0] > 0) == (styles.kind == HAIR_KINDS.index("bun")))
    assert 0.2 < (styles.beard[:, 1] > 0).float().mean() < 0.6  # four in ten have a beard or stubble
    curly = styles.kind == HAIR_KINDS.index("curly")
    assert (
        styles.thickness[curly].min() * 25 > 2.4
        and styles.curls[curly].abs().mean() > 3 * styles.curls[~curly].abs().mean()
    )


def test_hair_is_a_closed_volume_with_real_thickness(model, hair, heads):
    """The displaced skin stays one closed, outward-wound surface; hair moves it out, never in."""
    styles = _styles(6, 2, kind=torch.full((6,), HAIR_KINDS.index("medium")))
    offsets, on = _offsets(hair, heads[:6], styles)
    assert offsets.min() > -1e-6  # out or not at all: no zero-width sheet inside the skin
    assert (offsets.amax(dim=1) > 0.3 * styles.thickness).all()
    assert torch.all(offsets.amax(dim=1) <= styles.thickness * 1.6 + 1e-5)
    surface = head_surface(model)
    for head in on.vertices[:2]:
        mesh = surface.component_mesh(head.numpy(), "skin")
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0


def test_a_style_without_hair_adds_nothing(hair, heads):
    count = 4
    bald = _styles(
        count,
        3,
        hairline=torch.full((count, 7), NO_HAIR),
        length=torch.full((count,), CURTAIN_TOP),
        bun=torch.zeros(count, 2),
        beard=torch.zeros(count, 2),
    )
    on = hair.on_heads(heads[:count], bald)
    torch.testing.assert_close(on.vertices, heads[:count], rtol=0, atol=0)
    assert on.coverage.max() == 0
    pieces = hair.pieces(on.vertices, bald)
    inside = hair.radial_profile(on.vertices, pieces.curtain_centre, pieces.vertices)
    assert (inside[0] < inside[1]).all()  # curtain and bun folded inside the head


def test_curtain_and_bun_are_closed_and_where_their_styles_put_them(hair, heads):
    count = 2
    styles = _styles(count, 4, kind=torch.tensor([HAIR_KINDS.index("long"), HAIR_KINDS.index("bun")]))
    styles = replace(
        styles,
        length=torch.tensor([-0.8, CURTAIN_TOP]),
        bun=torch.tensor([[0.0, 0.5], [0.15, 0.5]]),
        curtain_thickness=torch.full((count,), 0.06),
    )
    on = hair.on_heads(heads[:count], styles)
    pieces = hair.pieces(on.vertices, styles)
    for head, part in ((0, ~pieces.is_bun), (1, pieces.is_bun)):  # the long style's curtain, the bun's bun
        used, local = torch.unique(pieces.faces[part], return_inverse=True)
        mesh = trimesh.Trimesh(pieces.vertices[head, used].numpy(), local.numpy(), process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    curtain = pieces.vertices[0, : hair._curtain_size * 2]
    assert curtain[:, 1].min() < -0.7  # the long style hangs below the shoulders' height
    bun = pieces.vertices[1, pieces.faces[pieces.is_bun].unique()]
    assert bun[:, 2].min() < heads[1, :, 2].min() - 0.1  # the bun sits behind the back of the head
    assert torch.allclose(pieces.bun_radius, torch.tensor([0.02, 0.15]))
    inside = pieces.contains(pieces.bun_centre[:, None])
    assert inside.all()


def test_hair_never_covers_the_face(model, hair, heads):
    """No vertex between the brows and the chin in front of the eyes moves out for scalp hair."""
    styles = _styles(24, 6, beard=torch.zeros(24, 2))
    offsets, _ = _offsets(hair, heads, styles)
    landmarks = heads[:, torch.as_tensor(np.array(model.landmarks_68))]
    x, y, z = heads[:, hair.rows].unbind(dim=-1)
    brows = landmarks[:, 17:27, 1].amin(dim=1)  # a fringe may reach the brows, not below
    chin = landmarks[:, 8, 1]
    eyes = landmarks[:, [36, 45], 0].abs().amax(dim=1)
    front = landmarks[:, [36, 45], 2].amin(dim=1) - 0.04
    in_face = (y < brows[:, None]) & (y > chin[:, None]) & (x.abs() < eyes[:, None]) & (z > front[:, None])
    assert not (in_face & (offsets > 1e-6)).any()


def test_beards_stay_off_the_lips_and_take_the_hair_colour(model, hair, heads):
    count = 4
    styles = _styles(count, 7, beard=torch.tensor([[0.04, 1.0]]).repeat(count, 1))
    offsets, on = _offsets(hair, heads[:count], styles)
    lips = torch.as_tensor(np.array(model.landmarks_68[48:60]))
    lip_rows = torch.isin(hair.rows, lips)
    assert not lip_rows.any() or offsets[:, lip_rows].max() == 0
    chin = hair.rows == int(model.landmarks_68[8])
    assert (offsets[:, chin] > 0.03).all() and (on.coverage[:, int(model.landmarks_68[8])] > 0.95).all()
    assert on.coverage[:, int(model.landmarks_68[62])].max() == 0  # the upper lip's inner edge


def test_hair_takes_the_given_colours():
    colours = torch.tensor([[0.5, 0.05, 0.02]]).repeat(24, 1)
    styles = sample_hair_styles(24, torch.Generator().manual_seed(7), colours)
    reddish = (styles.colour[:, 0] > 3 * styles.colour[:, 2]).float().mean()
    assert reddish > 0.7
    with pytest.raises(ValueError, match="colours"):
        sample_hair_styles(3, torch.Generator(), torch.zeros(2, 3))


def test_bad_heads_are_refused(hair, torso, heads):
    styles = sample_hair_styles(2, torch.Generator())
    with pytest.raises(ValueError, match="head_vertices"):
        hair.on_heads(heads[:2, :100], styles)
    with pytest.raises(ValueError, match="styles"):
        hair.on_heads(heads[:3], styles)
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
