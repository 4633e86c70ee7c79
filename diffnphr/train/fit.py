"""Latents for heads the decoder never saw, fitted with the decoder frozen.

This is how MonoNPHM validates its auto-decoder (reference note §5.2 a) and how we get the
best latent the decoder has for a head, the ceiling the factor map and every image-based
method are measured against: z_geo and z_app per identity and z_exp per expression are
optimised with Adam on the training losses of the heads' own samples (surface points with
normals and colours, space points, correspondences to the neutral, neutral anchors), minus the
term that only shapes the network (zero offsets far from the head). They start from the
factor map's latents when a map is given (the fit then measures what per-head optimisation
adds: the amortisation gap), else from zero; `code_max_norm` optionally keeps codes within a
norm, as MonoNPHM's codebooks are. All heads of a group of identities are fitted together,
one batch per step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffnphr.data.ict import load_ict
from diffnphr.data.sampling import HeadSampler
from diffnphr.devices import resolve_device
from diffnphr.heads.latents import SplitLatents, load_head_latents
from diffnphr.heads.split import load_head_split
from diffnphr.nphm.decoder import MonoNPHM
from diffnphr.nphm.factor_map import FactorMap
from diffnphr.train.config import PRECISIONS, training_sampling
from diffnphr.train.losses import LossWeights, head_loss_terms, total_loss

if TYPE_CHECKING:
    from diffnphr.data.factors import HeadFactors
    from diffnphr.data.samples import SamplingConfig
    from diffnphr.heads.split import HeadSplit

FIT_SETS = ("heldout", "train")


def _fit_sampling() -> SamplingConfig:
    return dataclasses.replace(training_sampling(), near_points=256, uniform_points=64)


@dataclass(frozen=True)
class FitConfig:
    """Settings of latent fitting (the reference's code learning rates and norm bound)."""

    steps: int = 500
    lr_shape_codes: float = 2e-3  # z_geo and z_app
    lr_expression_codes: float = 1e-2
    lr_halving_fractions: tuple[float, ...] = (0.5, 0.75)
    code_max_norm: float | None = None  # MonoNPHM's codebooks stay within norm 1; ours come from the factor map
    sampling: SamplingConfig = field(default_factory=_fit_sampling)
    losses: LossWeights = field(default_factory=lambda: LossWeights(offsets_far=0.0))
    identities_per_group: int = 16  # with 8 expressions: 128 heads per step
    precision: str = "tf32"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.identities_per_group < 1:
            raise ValueError(
                f"steps and identities_per_group must be positive; got {self.steps}, {self.identities_per_group}."
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")


def fit_latents(
    model: MonoNPHM,
    sampler: HeadSampler,
    heads: HeadFactors,
    slots: int,
    config: FitConfig | None = None,
    seed: int = 0,
    start: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fit (z_geo [N, ·], z_exp [N, X, ·], z_app [N, ·]) to N identities with X = `slots` expressions each.

    `heads` holds the N·X heads identity by identity (their identity, hair and colours the same
    within an identity); `start` optional latents of those N·X heads to start from (z_geo and
    z_app are taken from each identity's first head), else zeros. The sampler's device is used;
    the decoder's weights are not changed. Deterministic for a given seed on a given device.
    """
    config = config or FitConfig()
    device = sampler.device
    if len(heads) % slots:
        raise ValueError(f"{len(heads)} heads do not make whole identities of {slots} expressions each.")
    n = len(heads) // slots
    model_config = model.config
    if start is None:
        z_geo = torch.zeros(n, model_config.z_geo_dim, device=device)
        z_exp = torch.zeros(n, slots, model_config.lat_dim_exp, device=device)
        z_app = torch.zeros(n, model_config.z_app_dim, device=device)
    else:
        z_geo, z_exp, z_app = (z.detach().to(device).clone() for z in start)
        z_geo, z_exp, z_app = z_geo[::slots], z_exp.reshape(n, slots, -1), z_app[::slots]
    for code in (z_geo, z_exp, z_app):
        code.requires_grad_(True)
    optimizer = torch.optim.Adam(
        [{"params": [z_geo, z_app], "lr": config.lr_shape_codes}, {"params": [z_exp], "lr": config.lr_expression_codes}]
    )
    base_rates = [group["lr"] for group in optimizer.param_groups]
    heads = heads.to(device)
    rows = torch.arange(n, device=device).repeat_interleave(slots)
    is_neutral = (heads.expression == 0).all(dim=-1)
    autocast_dtype = PRECISIONS[config.precision] if device.type == "cuda" else None
    generator = torch.Generator().manual_seed(seed)
    for step in range(config.steps):
        batch = sampler.sample(heads, int(torch.randint(2**62, (), generator=generator)))
        codes = [z_geo[rows], z_exp.reshape(n * slots, -1), z_app[rows]]
        terms = head_loss_terms(model, *codes, batch, is_neutral, config.sampling.uniform_points, None, autocast_dtype)
        loss = total_loss(terms, config.losses)
        gradients = torch.autograd.grad(loss, [z_geo, z_exp, z_app])
        for code, gradient in zip((z_geo, z_exp, z_app), gradients):
            code.grad = gradient
        halvings = sum(step >= f * config.steps for f in config.lr_halving_fractions)
        for group, rate in zip(optimizer.param_groups, base_rates):
            group["lr"] = rate * 0.5**halvings
        optimizer.step()
        if config.code_max_norm is not None:
            with torch.no_grad():
                for code in (z_geo, z_exp, z_app):
                    norms = code.norm(dim=-1, keepdim=True)
                    code.mul_((config.code_max_norm / norms.clamp_min(1e-12)).clamp(max=1.0))
    return z_geo.detach(), z_exp.detach(), z_app.detach()


def identity_heads(split: HeadSplit, identities: Tensor, slots: int) -> HeadFactors:
    """The heads of `identities` with their first `slots` expressions, identity by identity."""
    return split.factors(identities.repeat_interleave(slots), torch.arange(slots).repeat(len(identities)))


def fit_heads(
    decoder_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    which: str = "heldout",
    count: int | None = None,
    expressions: int | None = None,
    steps: int | None = None,
    time_budget_s: float | None = None,
    config: FitConfig | None = None,
    factor_map_dir: str | os.PathLike | None = None,
    ict_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit latents to the `which` ("heldout" or "train") identities of a split, in resumable groups.

    `decoder_dir` is a decoder weights folder (`export_decoder`'s decoder/), `split_dir` a
    folder with split.json and heads.safetensors (a run folder or decoder_latents/);
    `factor_map_dir` a factor map folder whose latents the fit starts from. The first
    `count` identities of the set (default all) with their first `expressions` slots (default
    all) are fitted, `identities_per_group` at a time; after every group the latents so far are
    written to `out_dir` as `SplitLatents` named "fitted_<which>", and a later call skips the
    identities already there. With `time_budget_s`, stops before a group would overrun it.
    Returns a summary: fitted, remaining, path, the last group's loss and seconds per group.
    """
    started = time.monotonic()
    if which not in FIT_SETS:
        raise ValueError(f"which must be one of {', '.join(FIT_SETS)}; got {which!r}.")
    config = config or FitConfig()
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    device = resolve_device(device)
    split = load_head_split(split_dir)
    identities = split.heldout_identities if which == "heldout" else split.train_identities
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    identities = identities[:count] if count is not None else identities
    slots = split.expressions_per_identity if expressions is None else expressions
    if not 1 <= slots <= split.expressions_per_identity:
        raise ValueError(f"expressions must lie between 1 and {split.expressions_per_identity}; got {expressions}.")
    out_dir = Path(out_dir)
    name = f"fitted_{which}"
    done = _load_partial(out_dir, name, slots)
    todo = identities[~torch.isin(identities, done.identities)] if done is not None else identities
    group_s, last_loss = 0.0, None
    previous_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if config.precision == "tf32" else "highest")
    try:
        if len(todo):
            model = MonoNPHM.from_pretrained(decoder_dir, device=device)
            model.requires_grad_(False)
            factor_map = FactorMap.from_pretrained(factor_map_dir, device=device) if factor_map_dir else None
            sampler = HeadSampler(load_ict(ict_path), device, config.sampling)
        for start in range(0, len(todo), config.identities_per_group):
            if time_budget_s is not None and time.monotonic() - started + 1.2 * group_s > time_budget_s:
                break
            tick = time.monotonic()
            group = todo[start : start + config.identities_per_group]
            heads = identity_heads(split, group, slots)
            with torch.no_grad():
                initial = factor_map.latents(heads) if factor_map is not None else None
            z_geo, z_exp, z_app = fit_latents(model, sampler, heads, slots, config, seed + int(group[0]), initial)
            fitted = SplitLatents(group, z_geo.cpu(), z_exp.cpu(), z_app.cpu())
            done = fitted if done is None else _merge(done, fitted)
            done.save(out_dir, name)
            last_loss = _group_loss(model, sampler, heads, slots, fitted, config, seed)
            group_s = time.monotonic() - tick
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    n_done = 0 if done is None else int(torch.isin(identities, done.identities).sum())
    return {
        "fitted": n_done,
        "remaining": len(identities) - n_done,
        "path": str(out_dir),
        "name": name,
        "last_group_loss": last_loss,
        "seconds_per_group": group_s or None,
    }


def _load_partial(out_dir: Path, name: str, slots: int) -> SplitLatents | None:
    try:
        partial = load_head_latents(out_dir, name)
    except FileNotFoundError:
        return None
    if partial.z_exp.shape[1] != slots:
        raise ValueError(
            f"{out_dir} already holds '{name}' latents with {partial.z_exp.shape[1]} expressions per identity, "
            f"not {slots}; fit into another folder."
        )
    return partial


def _merge(first: SplitLatents, second: SplitLatents) -> SplitLatents:
    merged = [torch.cat([getattr(first, k), getattr(second, k)]) for k in ("identities", "z_geo", "z_exp", "z_app")]
    order = torch.argsort(merged[0])
    return SplitLatents(*(tensor[order] for tensor in merged))


def _group_loss(model, sampler, heads, slots, fitted, config, seed) -> float:
    """Total fitting loss of a fitted group on fresh samples (reported, not optimised)."""
    device = sampler.device
    rows = torch.arange(len(fitted.identities), device=device).repeat_interleave(slots)
    batch = sampler.sample(heads, seed + 1_000_003)
    codes = [
        fitted.z_geo.to(device)[rows],
        fitted.z_exp.to(device).reshape(len(rows), -1),
        fitted.z_app.to(device)[rows],
    ]
    dtype = PRECISIONS[config.precision] if device.type == "cuda" else None
    is_neutral = (heads.expression == 0).all(dim=-1).to(device)
    terms = head_loss_terms(model, *codes, batch, is_neutral, config.sampling.uniform_points, None, dtype)
    return float(total_loss(terms, config.losses).detach())
