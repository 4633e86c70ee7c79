"""MonoNPHM decoder: official parameter layout, agreement with a plain per-member implementation, blending, locality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffnphr import frame
from diffnphr.nphm import MonoNPHM, MonoNPHMConfig
from diffnphr.nphm.activations import softplus_
from diffnphr.nphm.canonical import gaussian_blend_weights
from diffnphr.nphm.ensemble import MemberBlocks, MemberSlices, edge_layout

STATE_DICT_LISTING = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mononphm_state_dict.txt"
BOX_MIN = torch.tensor(frame.BOX_MIN)
BOX_MAX = torch.tensor(frame.BOX_MAX)


def official_listing() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Sections of the official checkpoint listing: {'id_decoder': [(name, shape), ...], 'ex_decoder': [...]}."""
    assert STATE_DICT_LISTING.is_file(), f"the reference listing is expected at {STATE_DICT_LISTING}"
    sections: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for line in STATE_DICT_LISTING.read_text().splitlines():
        if line.startswith("#"):
            current = sections.setdefault(line.split("'")[1], [])
        elif line.strip():
            name, shape = line.split()
            current.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s)))
    return sections


def head_anchors(n: int = 65, seed: int = 0) -> np.ndarray:
    """Anchor template shaped like the official one: pairs (2j, 2j+1) mirrored in x, then midline anchors."""
    rng = np.random.default_rng(seed)
    pairs = rng.uniform([0.05, -0.45, -0.5], [0.29, 0.45, 0.28], size=(30, 3))
    mirrored = np.stack([pairs * [-1, 1, 1], pairs], axis=1).reshape(60, 3)
    midline = rng.uniform([0, -0.45, -0.5], [0, 0.45, 0.28], size=(n - 60, 3))
    return np.concatenate([mirrored, midline])


def make_model(config: MonoNPHMConfig, seed: int = 0) -> MonoNPHM:
    torch.manual_seed(seed)
    return MonoNPHM(config, head_anchors(config.n_anchors, seed)).eval()


def make_latents(config: MonoNPHMConfig, batch: int = 1, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z_geo = 0.3 * torch.randn(batch, config.z_geo_dim, generator=g, dtype=dtype)
    z_exp = 0.3 * torch.randn(batch, config.lat_dim_exp, generator=g, dtype=dtype)
    z_app = 0.3 * torch.randn(batch, config.z_app_dim, generator=g, dtype=dtype)
    return z_geo, z_exp, z_app


def box_points(batch: int, n: int, seed: int = 2, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (BOX_MIN + (BOX_MAX - BOX_MIN) * torch.rand(batch, n, 3, generator=g)).to(dtype)


# --- a plain implementation of reference §1.7, one sample and one member at a time ----------------


def run_member(member: torch.nn.Module, x: torch.Tensor, feature_index: int | None = None):
    """Run an official-layout member MLP; also return the output of layer `feature_index` (a pre-activation)."""
    feature = None
    for i, layer in enumerate(member.layers):
        x = layer(x)
        if i == feature_index:
            feature = x
    return x, feature


def reference_forward(model: MonoNPHM, points, z_geo, z_exp, z_app):
    """SDF, RGB, anchors, offsets, hyper of one sample written from the reference note, no shortcuts."""
    cfg = model.config
    idd, exd = model.id_decoder, model.ex_decoder
    n = points.shape[0]
    g = z_geo[: cfg.lat_dim_glob]
    anchors = idd.anchor_template.to(points) + idd.mlp_pos(g).view(cfg.n_anchors, 3)
    identity = exd.compressor(torch.cat([z_geo, anchors.reshape(-1)]))
    inp = torch.cat([points, torch.cat([identity, z_exp]).expand(n, -1)], dim=-1)
    h = inp
    for i in range(cfg.n_layers_ex + 1):
        if i == cfg.n_layers_ex // 2:
            h = torch.cat([h, inp], dim=-1) / np.sqrt(2)
        h = getattr(exd.defDeepSDF, f"lin{i}")(h)
        if i < cfg.n_layers_ex:
            h = F.softplus(h, beta=100)
    offsets, hyper = h[:, :3], h[:, 3:]
    xc = torch.cat([points + offsets, hyper], dim=-1)

    dist = torch.cdist(xc[:, :3], anchors)
    knn = dist.argsort(dim=1)[:, : cfg.n_neighbours]
    nodes = torch.cat([knn, torch.full((n, 1), cfg.n_anchors)], dim=1)
    node_pos = torch.cat([anchors, torch.zeros(1, 3, dtype=anchors.dtype)])
    node_pos = torch.cat([node_pos, torch.zeros(cfg.n_nodes, cfg.n_hyper, dtype=anchors.dtype)], dim=1)
    local_geo = z_geo[cfg.lat_dim_glob :].view(cfg.n_nodes, cfg.lat_dim_loc)
    local_app = z_app[cfg.lat_dim_glob :].view(cfg.n_nodes, cfg.lat_dim_loc)
    n_paired = 2 * cfg.n_symmetric_pairs

    sdf_edges = torch.zeros(n, cfg.n_neighbours + 1, dtype=points.dtype)
    rgb_edges = torch.zeros(n, cfg.n_neighbours + 1, 3, dtype=points.dtype)
    dists = torch.zeros(n, cfg.n_neighbours + 1, dtype=points.dtype)
    for j in range(cfg.n_neighbours + 1):
        for q in range(n):
            k = int(nodes[q, j])
            member = k // 2 if k < n_paired else k - cfg.n_symmetric_pairs
            delta = xc[q] - node_pos[k]
            dists[q, j] = 0.75 if k == cfg.n_anchors else delta[:3].norm()
            if k < n_paired and k % 2 == 1:
                delta = delta * torch.tensor([-1.0] + [1.0] * (cfg.canonical_dim - 1), dtype=delta.dtype)
            geo_in = torch.cat([g, local_geo[k], delta])
            sdf, feat = run_member(idd.deepSDFensemble.layers[member], geo_in, 2 * (cfg.n_layers_geo - 1))
            comm = idd.communcation_bottleneck2(F.relu(idd.communcation_bottleneck1(feat)))
            app_in = torch.cat([z_app[: cfg.lat_dim_glob], local_app[k], comm])
            rgb, _ = run_member(idd.aggr_app.layers[member], app_in)
            sdf_edges[q, j], rgb_edges[q, j] = sdf[0], rgb
    sigma = dists[:, :8].max(dim=1, keepdim=True).values / 3.75
    w = torch.exp(-0.5 * (dists / sigma) ** 2)
    w = w / (w.sum(dim=1, keepdim=True) + 1e-8)
    return {
        "sdf": (w * sdf_edges).sum(1),
        "rgb": (w[..., None] * rgb_edges).sum(1),
        "anchors": anchors,
        "offsets": offsets,
        "hyper_coords": hyper,
    }


# --- tests -----------------------------------------------------------------------------------------


def test_state_dict_names_and_shapes_equal_the_official_checkpoint():
    model = make_model(MonoNPHMConfig())
    for section, listing in official_listing().items():
        ours = [(k, tuple(v.shape)) for k, v in getattr(model, section).state_dict().items()]
        assert ours == listing, section
    assert set(model.state_dict()) == {f"{s}.{k}" for s, rows in official_listing().items() for k, _ in rows}


def test_a_state_dict_with_the_official_names_loads_strictly():
    model = make_model(MonoNPHMConfig())
    for section, listing in official_listing().items():
        state = {name: torch.randn(shape) for name, shape in listing}
        getattr(model, section).load_state_dict(state, strict=True)
        loaded = getattr(model, section).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(RuntimeError):
        model.ex_decoder.load_state_dict({"compressor.0.weight": torch.zeros(16, 2371)}, strict=True)


@pytest.mark.parametrize("config", [MonoNPHMConfig(), MonoNPHMConfig.small()], ids=["official", "small"])
@pytest.mark.parametrize("grad", [True, False], ids=["blocks (autograd)", "slices (CPU inference)"])
def test_both_edge_layouts_equal_a_plain_per_member_implementation(config, grad):
    model = make_model(config).double()
    z_geo, z_exp, z_app = make_latents(config, batch=2, dtype=torch.float64)
    points = box_points(2, 12, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        fast = {key: value.detach() for key, value in model(points, z_geo, z_exp, z_app).items()}
    with torch.no_grad():
        for b in range(2):
            ref = reference_forward(model, points[b], z_geo[b], z_exp[b], z_app[b])
            for key, value in ref.items():
                torch.testing.assert_close(fast[key][b], value, rtol=1e-9, atol=1e-11, msg=key)
    assert fast["sdf"].std() > 1e-3 and fast["rgb"].std() > 1e-3  # the comparison is not between constants


@pytest.mark.parametrize("softplus_beta", [None, 100.0], ids=["relu", "softplus"])
def test_the_two_edge_layouts_run_every_member_mlp_alike(softplus_beta):
    members, edges = 7, 500
    g = torch.Generator().manual_seed(0)
    member = torch.randint(0, members - 2, (edges,), generator=g)  # the last two members own no edge
    x = torch.randn(edges, 5, generator=g, dtype=torch.float64)
    table, index = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randint(0, 40, (edges,), generator=g)
    w1, w2, w3 = (torch.randn(members, *shape, generator=g, dtype=torch.float64) for shape in ((6, 5), (6, 6), (3, 6)))
    b2, b3 = torch.randn(members, 6, generator=g, dtype=torch.float64), torch.randn(members, 3, generator=g)
    b3 = b3.double()
    act = torch.relu if softplus_beta is None else (lambda h: F.softplus(h, beta=softplus_beta))

    def run(layout):
        base = layout.gather_rows(table, index)
        out, last_hidden = layout.mlp(base, layout.scatter(x), w1, [(w2, b2), (w3, b3)], softplus_beta, True)
        return layout.gather(out), layout.gather(last_hidden)

    per_edge_hidden = torch.stack(
        [w2[m] @ act(table[i] + w1[m] @ row) + b2[m] for m, i, row in zip(member.tolist(), index, x)]
    )
    per_edge = torch.stack([w3[m] @ act(h) + b3[m] for m, h in zip(member.tolist(), per_edge_hidden)])
    for layout in (MemberBlocks(member, members), MemberSlices(member, members)):
        out, last_hidden = run(layout)
        torch.testing.assert_close(out, per_edge)
        torch.testing.assert_close(last_hidden, per_edge_hidden)  # what the colour reads
    with torch.no_grad():
        assert isinstance(edge_layout(member, members), MemberSlices)
    assert isinstance(edge_layout(member, members), MemberBlocks)  # autograd needs the blocks


def test_the_in_place_softplus_equals_torchs_over_the_whole_range():
    values = torch.cat([torch.linspace(-3.0, 3.0, 100_001), torch.tensor([-1e4, -0.881, 0.799, 0.801, 0.9, 50.0])])
    for beta in (1.0, 100.0):
        expected = F.softplus(values, beta=beta)
        torch.testing.assert_close(softplus_(values.clone(), beta), expected, rtol=3e-7, atol=2e-7)  # an ulp
    small = torch.linspace(-0.5, 0.5, 1001)  # no value past the overflow guard: the short path
    torch.testing.assert_close(softplus_(small.clone(), 100.0), F.softplus(small, beta=100.0))
    assert softplus_(torch.empty(0), 100.0).numel() == 0


def test_blend_weights_sum_to_one_and_fall_with_distance():
    distances = torch.rand(500, 12).sort(dim=1).values * 0.6 + 1e-3
    weights = gaussian_blend_weights(distances)
    torch.testing.assert_close(weights.sum(-1), torch.ones(500), atol=1e-6, rtol=0)
    assert (weights >= 0).all() and (weights[:, :-1].diff(dim=1) <= 0).all()

    config = MonoNPHMConfig.small()
    model = make_model(config)
    field = model.bind(*make_latents(config)[:2])
    canonical = torch.cat([box_points(1, 300), 0.1 * torch.randn(1, 300, 2)], dim=-1)
    out = field.canonical(canonical)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(1, 300), atol=1e-6, rtol=0)
    assert (out.nodes[..., -1] == config.n_anchors).all()  # the global node is always the last edge


def test_per_point_outputs_do_not_depend_on_chunking():
    config = MonoNPHMConfig()
    model = make_model(config)
    z_geo, z_exp, z_app = make_latents(config)
    points = box_points(1, 90)
    with torch.inference_mode():
        field = model.bind(z_geo, z_exp, z_app)
        sdf, rgb = field.sdf_and_rgb(points)
        sdf_only = field.sdf(points)
        chunks = [field.sdf_and_rgb(c) for c in torch.split(points, [1, 7, 0, 40, 42], dim=1)]
    torch.testing.assert_close(sdf_only, sdf, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([c[0] for c in chunks], dim=1), sdf, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([c[1] for c in chunks], dim=1), rgb, atol=1e-6, rtol=0)


def test_point_queries_of_one_head_give_its_sdf_and_its_colour_in_unit_range():
    config = MonoNPHMConfig.small()
    model = make_model(config)
    z_geo, z_exp, z_app = make_latents(config)
    points = box_points(1, 50)
    with torch.inference_mode():
        field = model.bind(z_geo, z_exp, z_app)
        sdf, rgb = field.sdf_and_rgb(points)
        torch.testing.assert_close(field.point_sdf(points[0]), sdf[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(field.point_colour(points[0]), (rgb[0] + 1) / 2, atol=1e-6, rtol=0)
        two_heads = model.bind(*make_latents(config, batch=2))
        with pytest.raises(ValueError, match="one head"):
            two_heads.point_sdf(points[0])


def test_batch_of_two_equals_two_single_calls():
    config = MonoNPHMConfig.small()
    model = make_model(config)
    z_geo, z_exp, z_app = make_latents(config, batch=2)
    points = box_points(2, 64)
    with torch.no_grad():
        both = model(points, z_geo, z_exp, z_app)
        for b in range(2):
            one = model(points[b : b + 1], z_geo[b : b + 1], z_exp[b : b + 1], z_app[b : b + 1])
            for key in ("sdf", "rgb", "anchors", "offsets", "hyper_coords"):
                torch.testing.assert_close(both[key][b], one[key][0], atol=1e-6, rtol=1e-5, msg=key)


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    config = MonoNPHMConfig.small()
    model = make_model(config)
    model.save_pretrained(tmp_path)
    loaded = MonoNPHM.from_pretrained(tmp_path)
    assert loaded.config == config
    assert torch.equal(loaded.id_decoder.anchor_template, model.id_decoder.anchor_template)
    loaded_state = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    latents, points = make_latents(config), box_points(1, 50)
    with torch.inference_mode():
        a = model.bind(*latents).sdf_and_rgb(points)
        b = loaded.bind(*latents).sdf_and_rgb(points)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_local_code_moves_the_canonical_sdf_only_near_its_anchor():
    config = MonoNPHMConfig.small()
    model = make_model(config)
    z_geo, z_exp, z_app = make_latents(config)
    node = 62
    start = config.lat_dim_glob + node * config.lat_dim_loc
    moved = z_geo.clone()
    moved[:, start : start + config.lat_dim_loc] += torch.randn(config.lat_dim_loc)
    # fixed canonical queries: z_geo also enters the deformation (compressor), so posed queries would all move
    canonical = torch.cat([box_points(1, 1000, seed=5), 0.1 * torch.randn(1, 1000, 2)], dim=-1)
    with torch.no_grad():
        before = model.bind(z_geo, z_exp, z_app).canonical(canonical, with_rgb=True)
        after = model.bind(moved, z_exp, z_app).canonical(canonical, with_rgb=True)
    uses_node = (before.nodes[0, :, : config.n_neighbours] == node).any(dim=-1)
    nearest = before.nodes[0, :, 0] == node
    assert (~uses_node).sum() > 100 and nearest.sum() > 5
    assert torch.equal(after.sdf[0, ~uses_node], before.sdf[0, ~uses_node])
    assert torch.equal(after.rgb[0, ~uses_node], before.rgb[0, ~uses_node])
    assert ((after.sdf[0, nearest] - before.sdf[0, nearest]).abs() > 1e-5).all()

    # the global node's code reaches exactly the queries where its blend weight does not vanish:
    # those far from the anchors (sigma grows with the distance to the 8th nearest anchor)
    global_moved = z_geo.clone()
    global_moved[:, -config.lat_dim_loc :] += torch.randn(config.lat_dim_loc)
    with torch.no_grad():
        change = (model.bind(global_moved, z_exp, z_app).canonical(canonical).sdf - before.sdf)[0].abs()
    global_weight = before.weights[0, :, -1]
    reached, unreached = global_weight > 1e-3, global_weight < 1e-9
    assert reached.sum() > 10 and unreached.sum() > 10
    assert (change[reached] > 1e-6).all() and (change[unreached] < 1e-7).all()


def test_training_gradients_reach_latents_weights_and_points():
    config = MonoNPHMConfig.small()
    model = make_model(config).train()
    latents = [z.requires_grad_() for z in make_latents(config, batch=2)]
    points = box_points(2, 40).requires_grad_()
    out = model(points, *latents)
    (grad_points,) = torch.autograd.grad(out["sdf"].sum(), points, create_graph=True)
    loss = out["rgb"].square().mean() + (grad_points.norm(dim=-1) - 1).square().mean() + out["anchors"].square().mean()
    loss.backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in latents)
    member = model.id_decoder.deepSDFensemble.layers[config.n_members - 1].layers[0].weight
    colour = model.id_decoder.aggr_app.layers[0].layers[0].weight
    for param in (member, colour, model.ex_decoder.defDeepSDF.lin3.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_bad_inputs_get_clear_errors():
    config = MonoNPHMConfig.small()
    model = make_model(config)
    z_geo, z_exp, _z_app = make_latents(config)
    with pytest.raises(ValueError, match="z_exp must have shape"):
        model.bind(z_geo, z_exp[:, :50])
    with pytest.raises(ValueError, match="points must have shape"):
        model.bind(z_geo, z_exp).sdf(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="z_app"):
        model.bind(z_geo, z_exp).sdf_and_rgb(torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match=r"\(65, 3\)"):
        MonoNPHM(config, np.zeros((64, 3)))
    with pytest.raises(ValueError, match="n_neighbours"):
        MonoNPHMConfig(n_neighbours=6)


def test_cpu_passes_run_on_single_threaded_workers_in_order_and_raise_their_errors():
    import threading

    from diffnphr.nphm.cpu_passes import map_passes

    parts = list(torch.arange(40.0).split(3))

    def work(part):
        return part * 2, threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled()

    with torch.no_grad():
        results = map_passes(work, parts)
    torch.testing.assert_close(torch.cat([r[0] for r in results]), torch.arange(40.0) * 2)
    assert not any(r[3] for r in results)  # no autograd in the workers
    if torch.get_num_threads() > 1:  # one torch thread: everything runs in the caller
        assert {r[1].split("_")[0] for r in results} == {"diffnphr-cpu"} and {r[2] for r in results} == {1}

    def failing(part):
        raise ValueError("bad part")

    with torch.no_grad(), pytest.raises(ValueError, match="bad part"):
        map_passes(failing, parts)


def test_a_cpu_query_split_over_workers_equals_the_one_made_pass_by_pass():
    config = MonoNPHMConfig.small()
    model = make_model(config)
    z_geo, z_exp, z_app = make_latents(config, batch=1)
    points = box_points(1, 5000)  # several passes
    with torch.inference_mode():
        spread = model(points, z_geo, z_exp, z_app)
    with torch.enable_grad():  # the sequential path autograd takes
        one_by_one = {key: value.detach() for key, value in model(points, z_geo, z_exp, z_app).items()}
    for key in ("sdf", "rgb"):
        torch.testing.assert_close(spread[key], one_by_one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_cpu_passes_work_in_a_forked_child_of_a_process_that_used_them():
    import multiprocessing

    from diffnphr.nphm.cpu_passes import map_passes

    parts = list(torch.arange(12.0).split(2))
    with torch.no_grad():
        assert len(map_passes(torch.neg, parts)) == 6  # the parent's pool exists now
    child = multiprocessing.get_context("fork").Process(target=_passes_in_child, args=(parts,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "map_passes hung in a forked child (the parent's worker threads are not there)"
    assert child.exitcode == 0


def _passes_in_child(parts) -> None:
    from diffnphr.nphm.cpu_passes import map_passes

    with torch.no_grad():
        result = map_passes(torch.neg, parts)
    raise SystemExit(0 if torch.equal(torch.cat(result), -torch.arange(12.0)) else 1)
