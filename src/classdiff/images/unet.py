"""A hand-written DDPM U-Net for 28x28x1 images (epsilon prediction), after Ho et al. (2020) and the
precursor's ``Utils/Unet.py`` (Bonnaire et al. 2505.17638; see code-notes §1.4).

Layout with base width W and channel multipliers (m_1, ..., m_L) (L <= 3 at 28x28: 28 -> 14 -> 7):

* input 3x3 conv to W channels; sinusoidal embedding of the (real-valued) diffusion step k -> MLP -> 4W,
  plus an optional learned class embedding (class-conditional models) added to it;
* encoder: per level ``num_res_blocks`` residual blocks (GroupNorm(8) -> SiLU -> conv, + time embedding,
  GroupNorm -> SiLU -> dropout -> conv, 1x1 skip when channels change), self-attention after each block
  where the level's flag is set, a stride-2 3x3 conv between levels;
* middle: residual block, attention, residual block;
* decoder: per level ``num_res_blocks + 1`` residual blocks fed with the concatenated encoder skips,
  nearest-neighbour upsampling + 3x3 conv between levels;
* output GroupNorm -> SiLU -> 3x3 conv to 1 channel (the predicted noise epsilon), last conv zero-initialised.

Shapes: ``forward(x (B, 1, 28, 28), k (B,) float or int, y (B,) long or None) -> (B, 1, 28, 28)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding"]

GROUPS = 8


def timestep_embedding(k: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of steps ``k`` (B,): [cos(k w_j), sin(k w_j)], w_j = max_period^(-j/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=k.device) / half)
    args = k.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(GROUPS, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, pre-GroupNorm.

    Heads of dimension ``head_dim`` (channels // head_dim heads, at least one): on CPU, few wide heads with
    contiguous (B, heads, HW, dim) tensors take the fused attention kernel and are several times faster than
    many narrow ones.
    """

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        heads = max(1, channels // head_dim)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # (b, hw, c)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (b, heads, hw, c/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """DDPM U-Net for (B, 1, 28, 28) images; see the module docstring for the layout.

    Parameters
    ----------
    width : base width W (multiple of 8, GroupNorm with 8 groups).
    channel_mults : channels W * m_l at level l; at most 3 levels for 28x28.
    attention : one flag per level: self-attention after that level's residual blocks.
    dropout : dropout rate inside the residual blocks.
    num_res_blocks : residual blocks per encoder level (decoder has one more).
    num_classes : 0 for an unconditional model, else the number of class labels embedded.
    image_size, in_channels : input geometry (28, 1 for Fashion-MNIST).
    """

    def __init__(
        self,
        width: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4),
        attention: Sequence[bool] = (False, True, True),
        dropout: float = 0.1,
        num_res_blocks: int = 2,
        num_classes: int = 0,
        image_size: int = 28,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if width % GROUPS:
            raise ValueError(f"width = {width}: must be a multiple of {GROUPS} (GroupNorm with {GROUPS} groups)")
        if len(attention) != len(channel_mults):
            raise ValueError(f"attention = {list(attention)}: need one flag per level ({len(channel_mults)})")
        size = image_size
        for level in range(len(channel_mults) - 1):
            if size % 2:
                raise ValueError(f"channel_mults = {list(channel_mults)}: image side {size} at level {level} is odd; "
                                 f"{image_size}x{image_size} images allow at most {level + 1} levels")
            size //= 2
        self.width = width
        self.num_classes = num_classes
        emb_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)

        chans = [width * m for m in channel_mults]
        self.down = nn.ModuleList()
        skips = [width]
        c = width
        for level, (ch, att) in enumerate(zip(chans, attention, strict=True)):
            for _ in range(num_res_blocks):
                self.down.append(ResidualBlock(c, ch, emb_dim, dropout))
                c = ch
                if att:
                    self.down.append(SelfAttention(c))
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResidualBlock(c, c, emb_dim, dropout), SelfAttention(c),
                                  ResidualBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            ch, att = chans[level], attention[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(ResidualBlock(c + skips.pop(), ch, emb_dim, dropout))
                c = ch
                if att:
                    self.up.append(SelfAttention(c))
            if level > 0:
                self.up.append(_Upsample(c))
        self.out_norm = nn.GroupNorm(GROUPS, c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, k: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(k, self.width))
        if self.class_emb is not None:
            if y is None:
                raise ValueError("y: class labels are required by a class-conditional UNet (num_classes > 0)")
            emb = emb + self.class_emb(y)
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            if isinstance(m, ResidualBlock):
                h = m(h, emb)
            elif isinstance(m, SelfAttention):
                h = m(h)
                hs[-1] = h
                continue
            else:
                h = m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb) if isinstance(m, ResidualBlock) else m(h)
        for m in self.up:
            if isinstance(m, ResidualBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = m(h)
        return self.out(F.silu(self.out_norm(h)))


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
