"""Conditional 1D U-Net that predicts the noise (or velocity) of a noisy latent sequence.

The latent is a 1-channel sequence whose positions each mean something fixed (a MonoNPHM code
entry), so besides the timestep and the image condition the network gets a learned absolute
position embedding. The condition enters twice: added to the timestep embedding that scales and
shifts every residual block (FiLM), and as a few tokens that the attention layers attend to next
to the sequence itself (cross-attention folded into self-attention). Attention runs at the
configured (low-resolution) levels as linear attention, whose cost grows linearly with the length,
and in the middle as softmax attention, as in DPHM's 1D U-Net over NPHM latents.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffnphr.diffusion.config import DiffusionConfig


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal features [B, dim] of integer (or real) diffusion timesteps [B]."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        features = F.pad(features, (0, 1))
    return features


class ResBlock1D(nn.Module):
    """Two 3-tap convolutions with GroupNorm/SiLU, FiLM-modulated by the time+condition embedding."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ConditionedAttention1D(nn.Module):
    """Multi-head attention of the sequence over itself plus the condition tokens (residual).

    `linear=False` is softmax attention (quadratic in length, for the shortest sequences);
    `linear=True` is linear attention (keys normalised over positions, queries over features),
    whose cost grows linearly with the length.
    """

    def __init__(self, channels: int, heads: int, token_dim: int, groups: int, linear: bool) -> None:
        super().__init__()
        self.heads = heads
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(token_dim, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        batch, channels, length = x.shape
        head_dim = channels // self.heads
        sequence = self.norm(x).transpose(1, 2)
        q, k, v = self.qkv(sequence).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k_ctx, v_ctx = self.context_kv(tokens).view(batch, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k, v = torch.cat([k, k_ctx], dim=2), torch.cat([v, v_ctx], dim=2)
        if self.linear:
            summary = k.softmax(dim=2).transpose(-1, -2) @ v
            attended = (q.softmax(dim=-1) * head_dim**-0.5) @ summary
        else:
            attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(1, 2).reshape(batch, length, channels)).transpose(1, 2)


class Downsample1D(nn.Module):
    """Halve the length with a strided convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    """Double the length with a stride-2 transposed convolution, narrowing to the finer level's width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UNetLevel(nn.Module):
    """The residual blocks (and optional attention layers) of one resolution on one side of the U."""

    def __init__(self, in_channels: list[int], out_channels: int, config: DiffusionConfig, attention: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock1D(c, out_channels, config.time_embed_dim, config.norm_groups, config.dropout) for c in in_channels
        )
        self.attentions = (
            nn.ModuleList(
                ConditionedAttention1D(
                    out_channels, config.attention_heads, config.time_embed_dim, config.norm_groups, linear=True
                )
                for _ in in_channels
            )
            if attention
            else None
        )

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor, skips: list[Tensor], push: bool) -> Tensor:
        """Run the blocks; on the way down push each output to `skips`, on the way up pop one per block."""
        for index, block in enumerate(self.blocks):
            if not push:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if self.attentions is not None:
                x = self.attentions[index](x, tokens)
            if push:
                skips.append(x)
        return x


class UNet1D(nn.Module):
    """1D U-Net: `forward(x [B, C, L], timesteps [B], cond [B, cond_dim], drop_cond [B] | None)`.

    `drop_cond` marks rows whose condition is replaced by the learned null embedding (classifier-
    free guidance). The last convolution is zero-initialised, so an untrained network predicts 0.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * m for m in config.channel_mults]
        base, embed_dim = config.base_channels, config.time_embed_dim

        self.time_mlp = nn.Sequential(nn.Linear(base, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.cond_mlp = nn.Sequential(nn.Linear(config.cond_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.cond_to_tokens = nn.Linear(config.cond_dim, config.cond_tokens * embed_dim)
        self.null_cond = nn.Parameter(torch.zeros(config.cond_dim))

        self.input_conv = nn.Conv1d(config.in_channels, base, 7, padding=3)
        self.position = nn.Parameter(torch.randn(1, base, config.sample_length) * 0.02)

        n_blocks = config.res_blocks_per_level
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        previous = base
        for level, width in enumerate(widths):
            inputs = [previous] + [width] * (n_blocks - 1)
            self.down_levels.append(UNetLevel(inputs, width, config, level in config.attention_levels))
            if level < len(widths) - 1:
                self.downsamples.append(Downsample1D(width))
            previous = width

        self.mid_block1 = ResBlock1D(previous, previous, embed_dim, config.norm_groups, config.dropout)
        self.mid_attention = ConditionedAttention1D(
            previous, config.attention_heads, embed_dim, config.norm_groups, linear=False
        )
        self.mid_block2 = ResBlock1D(previous, previous, embed_dim, config.norm_groups, config.dropout)

        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up_levels.append(UNetLevel([2 * width] * n_blocks, width, config, level in config.attention_levels))
            if level > 0:
                self.upsamples.append(Upsample1D(width, widths[level - 1]))

        self.output_norm = nn.GroupNorm(config.norm_groups, base)
        self.output_conv = nn.Conv1d(base, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def forward(self, x: Tensor, timesteps: Tensor, cond: Tensor, drop_cond: Tensor | None = None) -> Tensor:
        """Predict the configured target (noise or velocity) for noisy samples `x` at `timesteps`."""
        if drop_cond is not None:
            cond = torch.where(drop_cond[:, None], self.null_cond.to(cond.dtype), cond)
        timesteps = timesteps.expand(x.shape[0]) if timesteps.dim() == 0 else timesteps
        time_features = timestep_embedding(timesteps, self.config.base_channels).to(x.dtype)
        emb = self.time_mlp(time_features) + self.cond_mlp(cond)
        tokens = self.cond_to_tokens(cond).view(x.shape[0], self.config.cond_tokens, -1)

        h = self.input_conv(x) + self.position
        skips: list[Tensor] = []
        for level, down in enumerate(self.down_levels):
            h = down(h, emb, tokens, skips, push=True)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)

        h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb), tokens), emb)

        for level, up in enumerate(self.up_levels):
            h = up(h, emb, tokens, skips, push=False)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)
        return self.output_conv(F.silu(self.output_norm(h)))
