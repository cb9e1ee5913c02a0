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

How the computation is done (the function and the parameters are those of the layout above; the state_dict
keys are those of the first, plain version, whose checkpoints load unchanged; ``tests/test_unet_numerics.py``
checks outputs and gradients against that plain version). Pure PyTorch, on any device:

* activations and conv weights in channels_last (NHWC): oneDNN convolves NHWC without reordering to and from its
  blocked layout on every call, and the attention tokens (B, HW, C) are then a free view;
* GroupNorm of many pixels (the 28x28 levels) through :class:`_GroupNormNHWC` on CPU (per-channel sums, one fused
  scale-and-shift, the closed-form backward of :func:`_group_norm_backward`), the others through
  ``F.group_norm``; where a SiLU follows, it is applied in place on the normalised tensor and its backward
  recomputes that tensor from the input, so the pair keeps one activation for the backward instead of two;
* nearest-neighbour 2x upsampling followed by a 3x3 conv computed as one 2x2 conv with 4x the output channels on
  the low-resolution input, interleaved (sub-pixel form; 4/9 of the multiply-adds, no upsampled copy); the
  2x2 kernels are sums of the 3x3 taps (:func:`_subpixel_weight`), so gradients reach the same 3x3 weight;
* attention over at most ``BMM_ATTENTION_MAX_TOKENS`` positions (7x7) on CPU as batched matmuls with a
  hand-written backward (:class:`_Attention`); elsewhere ``F.scaled_dot_product_attention``;
* the time-embedding projections of all residual blocks as one matmul;
* dropout masks on CPU from 15-bit integers of torch's generator, four per 64-bit draw (:func:`_dropout_mask`:
  the drop probability is p rounded to a multiple of 2^-15, 0.1 -> 0.1000061), kept as a 0/1 uint8 mask and
  applied in place (the normalised activation it masks is kept by nothing else); the 1 / (1 - p) scale is folded
  into the weight of the conv that follows (conv(s a) = conv with weight s w of a), one pass less over the
  activations, forward and backward. The same seed gives the same masks on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding"]

GROUPS = 8
NHWC_GROUPNORM_MIN_PIXELS = 256  # _GroupNormNHWC from this many pixels (28x28 levels); ATen's kernel below
BMM_ATTENTION_MAX_TOKENS = 64  # CPU attention over at most this many positions (7x7) through _Attention


def timestep_embedding(k: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of steps ``k`` (B,): [cos(k w_j), sin(k w_j)], w_j = max_period^(-j/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=k.device) / half)
    args = k.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _group_stats(xv: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std (B, G, 1) of the groups of channels of ``xv`` (B, HW, C); moments combined in float64."""
    b, hw, c = xv.shape
    n = hw * (c // groups)
    s1 = xv.sum(1).view(b, groups, -1).sum(-1, keepdim=True).double()
    s2 = torch.linalg.vecdot(xv, xv, dim=1).view(b, groups, -1).sum(-1, keepdim=True).double()
    mean = s1 / n
    var = (s2 / n - mean.square()).clamp_min(0.0)
    return mean.to(xv.dtype), (var + eps).rsqrt().to(xv.dtype)


def _group_affine(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) scale and shift (B, 1, C) with GroupNorm(x) = x * scale + shift."""
    b, groups = mean.shape[:2]
    c = weight.numel()
    wg = weight.view(groups, -1)
    return (wg * rstd).view(b, 1, c), bias.view(1, 1, c) - (wg * (mean * rstd)).view(b, 1, c)


def _group_norm_backward(gv: torch.Tensor, xv: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                         rstd: torch.Tensor, needs: tuple[bool, bool, bool]
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dx (B, HW, C), dweight (C,), dbias (C,)) of GroupNorm from the output gradient ``gv`` (B, HW, C),
    the input ``xv`` (B, HW, C) and the group moments (B, G, 1); ``needs`` flags which of the three to compute.

    With xhat = (x - mean) rstd, dxhat = gamma g and means over the N = HW C/G elements of a group:
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), from the per-channel sums of g and g x.
    """
    b, hw, c = xv.shape
    groups = mean.shape[1]
    cg = c // groups
    n = hw * cg
    sum_g = gv.sum(1).view(b, groups, cg)  # sum over pixels of g, per channel
    sum_gxhat = (torch.linalg.vecdot(gv, xv, dim=1).view(b, groups, cg) - mean * sum_g) * rstd
    wg = weight.view(groups, cg)
    dweight = sum_gxhat.sum(0).reshape(c) if needs[1] else None
    dbias = sum_g.sum(0).reshape(c) if needs[2] else None
    dx = None
    if needs[0]:
        m1 = (wg * sum_g).sum(-1, keepdim=True) / n  # mean(dxhat) per group
        m2 = (wg * sum_gxhat).sum(-1, keepdim=True) / n  # mean(dxhat xhat) per group
        coef_x = (-rstd.square() * m2).expand(b, groups, cg).reshape(b, 1, c)
        const = (rstd * (mean * rstd * m2 - m1)).expand(b, groups, cg).reshape(b, 1, c)
        dx = torch.addcmul(const, xv, coef_x).addcmul_(gv, (wg * rstd).view(b, 1, c))
    return dx, dweight, dbias


def _pixels_view(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels_last -> (B, HW, C), a view."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


class _GroupNormNHWC(torch.autograd.Function):
    """``F.group_norm`` of a channels_last (B, C, H, W) tensor, output channels_last; with ``silu`` true,
    ``F.silu(F.group_norm(x))``.

    Forward: per-channel sums of x and x^2 over the pixels, group moments, z = x * scale + shift in one pass (and
    the SiLU in place on z). Backward: :func:`_group_norm_backward`; with the SiLU, z is recomputed from x (one
    pass) instead of being kept from the forward, so the pair stores one activation (x) instead of two (x, z).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, silu):
        xv = _pixels_view(x)
        mean, rstd = _group_stats(xv, groups, eps)
        scale, shift = _group_affine(weight, bias, mean, rstd)
        out = torch.empty_like(x, memory_format=torch.channels_last)  # not a view: callers may modify it in place
        z = torch.addcmul(shift, xv, scale, out=_pixels_view(out))
        if silu:
            F.silu(z, inplace=True)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        gv = _pixels_view(g.contiguous(memory_format=torch.channels_last))
        xv = _pixels_view(x)
        if ctx.silu:  # gradient through the SiLU, at z recomputed from x, written over z
            scale, shift = _group_affine(weight, bias, mean, rstd)
            z = torch.addcmul(shift, xv, scale)
            gv = torch.ops.aten.silu_backward.grad_input(gv, z, grad_input=z)
        dxv, dweight, dbias = _group_norm_backward(gv, xv, weight, mean, rstd, ctx.needs_input_grad[:3])
        dx = None if dxv is None else dxv.view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)
        return dx, dweight, dbias, None, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state_dict keys), followed by a SiLU when ``silu`` is true.

    ``forward(x, offset=None)``: with ``offset`` (B, C), the normalised input is ``x + offset[:, :, None, None]``.
    Channels_last CPU inputs of at least ``NHWC_GROUPNORM_MIN_PIXELS`` pixels go through :class:`_GroupNormNHWC`,
    the rest through ``F.group_norm``."""

    def __init__(self, num_groups: int, num_channels: int, silu: bool = False) -> None:
        super().__init__(num_groups, num_channels)
        self.silu = silu

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu=True" if self.silu else "")

    def _channels_last_float_cpu(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and self.affine and x.dtype == self.weight.dtype
                and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        if offset is not None:
            x = x + offset[:, :, None, None]
        if self._channels_last_float_cpu(x) and x.shape[2] * x.shape[3] >= NHWC_GROUPNORM_MIN_PIXELS:
            return _GroupNormNHWC.apply(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(y) if self.silu else y


def _dropout_mask(x: torch.Tensor, p: float, inplace: bool = False) -> tuple[torch.Tensor, float]:
    """(x * keep, 1 / (1 - p')): inverted dropout with the scaling left to the caller (the U-Net folds it into the
    next conv's weight). An element is zeroed with probability p'.

    On CPU the mask comes from 15-bit uniform integers, four per 64-bit draw of the generator (``random_`` on
    int64 gives 63 random bits; one draw per four elements instead of one float each); p' is then p rounded to a
    multiple of 2^-15 (0.1 -> 3277 / 32768 = 0.1000061), and the scale uses p', so the expectation stays exact.
    Elsewhere, under ``torch.compile`` (dynamo does not trace ``random_``), or for p below 2^-16 or above
    1 - 2^-16: uniform floats >= p, p' = p.
    """
    thr = round(p * 32768)
    if x.device.type == "cpu" and 0 < thr < 32768 and x.dim() == 4 and not torch.compiler.is_compiling() and (
            x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].bitwise_and_(0x7FFF)
        # a 0/1 uint8 mask: float times uint8 is cheaper than float times bool (forward and backward)
        keep = torch.ge(bits, thr, out=torch.empty(n, dtype=torch.uint8))
        b, c, h, w = x.shape
        keep = keep.view(x.shape) if x.is_contiguous() else keep.view(b, h, w, c).permute(0, 3, 1, 2)
        return (x.mul_(keep) if inplace else x * keep), 1.0 / (1.0 - thr / 32768)
    keep = torch.rand_like(x) >= p
    return (x.mul_(keep) if inplace else x * keep), 1.0 / (1.0 - p)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (see :func:`_dropout_mask`)."""
    if not training or p == 0.0:
        return x
    y, scale = _dropout_mask(x, p)
    return y * scale


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(GROUPS, c_in, silu=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = GroupNorm(GROUPS, c_out, silu=True)
        self.dropout = float(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, padding=0) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, emb_out: torch.Tensor | None = None) -> torch.Tensor:
        """``emb`` (B, emb_dim) the time (+ class) embedding; ``emb_out`` (B, c_out), if given, is ``self.emb(emb)``
        already computed (the UNet projects the embedding for all its blocks in one matmul)."""
        h = self.conv1(self.norm1(x))  # norm1, norm2: GroupNorm then SiLU
        e = self.emb(emb) if emb_out is None else emb_out
        drop = self.dropout if self.training else 0.0
        h += e[:, :, None, None]  # in place: conv saves no output
        a = self.norm2(h)
        if drop > 0.0:  # conv2(scale * a * keep) = conv with weight scale * w of a * keep
            a, scale = _dropout_mask(a, drop, inplace=True)  # a is not saved by the norm's backward
            h = F.conv2d(a, self.conv2.weight * scale, self.conv2.bias, padding=1)
        else:
            h = self.conv2(a)
        return h.add_(self.skip(x))


class _Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) q, k, v with batched matmuls, keeping the N x N probabilities
    for the backward (for short sequences, where ATen's flash kernel on CPU costs more than the matmuls).

    Backward: dv = P^T do, dS = P * (do v^T - rowsum(do * o)), dq = dS k / sqrt(d), dk = dS^T q / sqrt(d).
    """

    @staticmethod
    def forward(ctx, q, k, v):
        b, heads, n, d = q.shape
        scale = 1.0 / math.sqrt(d)
        q, k, v = (t.reshape(b * heads, n, d) for t in (q, k, v))
        p = torch.baddbmm(q.new_empty(b * heads, n, n), q, k.transpose(1, 2), beta=0.0, alpha=scale)
        torch.softmax(p, -1, out=p)
        o = torch.bmm(p, v)
        ctx.save_for_backward(q, k, v, p, o)
        return o.view(b, heads, n, d)

    @staticmethod
    def backward(ctx, g):
        q, k, v, p, o = ctx.saved_tensors
        b, heads, n, d = g.shape
        scale = 1.0 / math.sqrt(d)
        g = g.reshape(b * heads, n, d)
        dv = torch.bmm(p.transpose(1, 2), g)
        ds = torch.bmm(g, v.transpose(1, 2)).sub_(torch.linalg.vecdot(g, o).unsqueeze(-1)).mul_(p)
        dq = torch.bmm(ds, k).mul_(scale)
        dk = torch.bmm(ds.transpose(1, 2), q).mul_(scale)
        return dq.view(b, heads, n, d), dk.view(b, heads, n, d), dv.view(b, heads, n, d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, pre-GroupNorm.

    Heads of dimension ``head_dim`` (channels // head_dim heads, at least one): on CPU, few wide heads are faster
    than many narrow ones. ``F.scaled_dot_product_attention``, except on CPU over at most
    ``BMM_ATTENTION_MAX_TOKENS`` positions: :class:`_Attention`.
    """

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        heads = max(1, channels // head_dim)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = GroupNorm(GROUPS, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (b, hw, c); a view when channels_last
        qkv = self.qkv(tokens)  # (b, hw, 3c): q | k | v, heads of c/heads channels in each
        # (b, heads, hw, c/heads) views; their gradients stack straight into the (b, hw, 3c) layout of the linear
        q, k, v = (t.transpose(1, 2) for t in qkv.view(b, h * w, 3, self.heads, c // self.heads).unbind(2))
        if x.device.type == "cpu" and h * w <= BMM_ATTENTION_MAX_TOKENS:
            out = _Attention.apply(q, k, v)  # (b, heads, hw, c/heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, h * w, c)
        out = self.proj(out)
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last layout


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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout = {dropout}: must lie in [0, 1)")
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
        self.out_norm = GroupNorm(GROUPS, c, silu=True)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._blocks = [m for m in self.modules() if isinstance(m, ResidualBlock)]  # order of the fused projection
        self.to(memory_format=torch.channels_last)  # conv weights; .to(device) keeps the layout

    def forward(self, x: torch.Tensor, k: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(k, self.width))
        if self.class_emb is not None:
            if y is None:
                raise ValueError("y: class labels are required by a class-conditional UNet (num_classes > 0)")
            emb = emb + self.class_emb(y)
        # all residual blocks' projections of the embedding in one matmul
        weight = torch.cat([m.emb.weight for m in self._blocks])
        bias = torch.cat([m.emb.bias for m in self._blocks])
        proj = dict(zip(self._blocks, F.linear(emb, weight, bias).split([m.emb.out_features for m in self._blocks], 1),
                        strict=True))
        h = self.inp(x.contiguous(memory_format=torch.channels_last))
        hs = [h]
        for m in self.down:
            if isinstance(m, ResidualBlock):
                h = m(h, emb, proj[m])
            elif isinstance(m, SelfAttention):
                h = m(h)
                hs[-1] = h
                continue
            else:
                h = m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb, proj[m]) if isinstance(m, ResidualBlock) else m(h)
        for m in self.up:
            if isinstance(m, ResidualBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), emb, proj[m])
            else:
                h = m(h)
        return self.out(self.out_norm(h))  # out_norm: GroupNorm then SiLU


def _subpixel_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4 O, I, 2, 2): the 3x3 conv of a nearest-upsampled (2x) image as 2x2 convs of the original.

    Output row 2i (parity 0) sees upsampled rows 2i-1, 2i, 2i+1 = original rows i-1, i, i: taps (w0, w1 + w2) on
    rows (i-1, i); row 2i+1 (parity 1) sees original rows i, i, i+1: taps (w0 + w1, w2) on rows (i, i+1). Same for
    columns. Blocks ordered by (row parity, column parity).
    """
    rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))
    return torch.cat([torch.stack(c, -1) for r in rows
                      for c in ((r[..., 0], r[..., 1] + r[..., 2]), (r[..., 0] + r[..., 1], r[..., 2]))])


class _Interleave(torch.autograd.Function):
    """(B, 4 O, H + 1, W + 1) sub-pixel conv output -> (B, O, 2H, 2W), both channels_last.

    out[:, o, 2i + py, 2j + px] = y[:, (py, px, o), i + py, j + px]. Written as one autograd node so that the
    backward is one strided copy per parity block instead of four zero-filled full-size slice gradients.
    """

    @staticmethod
    def forward(ctx, y):
        b, c4, h1, w1 = y.shape
        o, h, w = c4 // 4, h1 - 1, w1 - 1
        yv = y.permute(0, 2, 3, 1).reshape(b, h1, w1, 2, 2, o)
        out = y.new_empty(b, h, 2, w, 2, o)
        for py in (0, 1):
            for px in (0, 1):
                out[:, :, py, :, px] = yv[:, py:py + h, px:px + w, py, px]
        return out.view(b, 2 * h, 2 * w, o).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        b, o, h2, w2 = g.shape
        h, w = h2 // 2, w2 // 2
        gv = g.permute(0, 2, 3, 1).reshape(b, h, 2, w, 2, o)
        gy = g.new_empty(b, h + 1, w + 1, 2, 2, o)
        for py in (0, 1):
            for px in (0, 1):
                gy[:, py:py + h, px:px + w, py, px] = gv[:, :, py, :, px]
                gy[:, h if py == 0 else 0, :, py, px] = 0.0  # the row and column this block does not use
                gy[:, :, w if px == 0 else 0, py, px] = 0.0
        return gy.view(b, h + 1, w + 1, 4 * o).permute(0, 3, 1, 2)


class _Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv, computed in the sub-pixel form (see the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y[:, (py, px, o), i', j'] sees original rows (i'-1, i') and columns (j'-1, j')
        y = F.conv2d(x, _subpixel_weight(self.conv.weight), self.conv.bias.repeat(4), padding=1)
        return _Interleave.apply(y)
