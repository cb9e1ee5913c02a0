"""The U-Net's fast paths against a straightforward reference implementation of the same network.

``PlainUNet`` below is the first, plain version of ``classdiff.images.unet.UNet`` (nn.GroupNorm, nn.Dropout,
softmax(QK^T / sqrt(d)) V written out, nearest upsampling then a 3x3 conv, one embedding projection per block).
Checkpoints of either load into the other (same state_dict keys and shapes) and give the same outputs and
gradients within float32 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from classdiff.images import unet as U
from classdiff.images.unet import UNet, timestep_embedding

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------------------------- plain reference


class PlainBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.conv2(self.dropout(F.silu(self.norm2(h)))) + self.skip(x)


class PlainAttention(nn.Module):
    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        heads = max(1, channels // head_dim)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out = self.proj((att @ v).transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class PlainUpsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class PlainUNet(nn.Module):
    def __init__(self, width, channel_mults, attention, dropout, num_res_blocks=2, num_classes=0):
        super().__init__()
        self.width, emb_dim = width, 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        chans = [width * m for m in channel_mults]
        self.down, skips, c = nn.ModuleList(), [width], width
        for level, (ch, att) in enumerate(zip(chans, attention, strict=True)):
            for _ in range(num_res_blocks):
                self.down.append(PlainBlock(c, ch, emb_dim, dropout))
                c = ch
                if att:
                    self.down.append(PlainAttention(c))
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([PlainBlock(c, c, emb_dim, dropout), PlainAttention(c),
                                  PlainBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            for _ in range(num_res_blocks + 1):
                self.up.append(PlainBlock(c + skips.pop(), chans[level], emb_dim, dropout))
                c = chans[level]
                if attention[level]:
                    self.up.append(PlainAttention(c))
            if level > 0:
                self.up.append(PlainUpsample(c))
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x, k, y=None):
        emb = self.time_mlp(timestep_embedding(k, self.width))
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            if isinstance(m, PlainBlock):
                h = m(h, emb)
            elif isinstance(m, PlainAttention):
                h = hs[-1] = m(h)
                continue
            else:
                h = m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb) if isinstance(m, PlainBlock) else m(h)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], 1), emb) if isinstance(m, PlainBlock) else m(h)
        return self.out(F.silu(self.out_norm(h)))


def _pair(width=16, mults=(1, 2, 4), attention=(False, True, True), num_classes=0, num_res_blocks=2):
    torch.manual_seed(0)
    plain = PlainUNet(width, mults, attention, 0.1, num_res_blocks, num_classes)
    with torch.no_grad():  # non-trivial weights everywhere (the real output conv starts at zero)
        for p in plain.parameters():
            p.normal_(0.0, 0.3 / math.sqrt(max(1, p[0].numel())) if p.dim() > 1 else 0.2)
        for m in plain.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.add_(1.0)
    fast = UNet(width, mults, attention, dropout=0.1, num_res_blocks=num_res_blocks, num_classes=num_classes)
    fast.load_state_dict(plain.state_dict())  # strict: same keys and shapes
    return plain, fast


def _inputs(b=3, num_classes=0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, 28, 28, generator=g)
    k = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, num_classes, (b,), generator=g) if num_classes else None
    return x, k, y


# ----------------------------------------------------------------------------------------------- tests


def test_state_dict_keys_are_those_of_the_plain_version():
    plain, fast = _pair(width=8, mults=(1, 2), attention=(False, True), num_classes=3)
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == \
           [(k, v.shape) for k, v in fast.state_dict().items()]
    plain.load_state_dict(fast.state_dict())  # and back


@pytest.mark.parametrize("num_classes", [0, 3])
def test_forward_and_gradients_match_the_plain_version(num_classes):
    """Full U-Net (channels_last, NHWC GroupNorm at 28x28, flash attention at 14x14, _Attention at 7x7, sub-pixel
    upsampling, fused embedding projections) against the plain one, same weights, dropout off."""
    plain, fast = _pair(num_classes=num_classes)
    x, k, y = _inputs(num_classes=num_classes)
    plain.eval()
    fast.eval()
    with torch.no_grad():
        ref, out = plain(x, k, y), fast(x, k, y)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    # gradients of every parameter (train mode; dropout off in both so that the masks do not differ)
    plain.train()
    fast.train()
    for m in plain.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for m in fast.modules():
        if isinstance(m, U.ResidualBlock):
            m.dropout = 0.0
    target = torch.randn_like(x)
    F.mse_loss(plain(x, k, y), target).backward()
    F.mse_loss(fast(x, k, y), target).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * scale + 1e-12, msg=name)


@pytest.mark.parametrize("silu", [False, True])
def test_nhwc_groupnorm_matches_group_norm_and_its_gradient(silu):
    """_GroupNormNHWC (and with silu its fused SiLU, whose backward recomputes the normalised input) equals
    F.group_norm (then F.silu): float64 values to 1e-12 and gradcheck; float32 through the module at 28x28."""
    def reference(x, w, b, groups, eps):
        y = F.group_norm(x, groups, w, b, eps)
        return F.silu(y) if silu else y

    torch.manual_seed(0)
    for c, groups in [(16, 8), (8, 8), (24, 8)]:  # C/G = 2, 1, 3
        x = (torch.randn(2, c, 5, 4, dtype=torch.float64) * 2 + 3).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, dtype=torch.float64)
        b = torch.randn(c, dtype=torch.float64)
        ref = reference(x, w, b, groups, 1e-5)
        out = U._GroupNormNHWC.apply(x, w, b, groups, 1e-5, silu)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
        assert torch.autograd.gradcheck(lambda x, w, b, g=groups: U._GroupNormNHWC.apply(x, w, b, g, 1e-5, silu),
                                        args)
    # float32, offset activations, through the module at 28x28 (the path the U-Net takes there)
    gn = U.GroupNorm(8, 32, silu=silu)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = (torch.randn(4, 32, 28, 28) * 0.5 + 2.0).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(4, 32, 28, 28)
    out = gn(x)
    assert out.grad_fn is not None and "GroupNormNHWC" in type(out.grad_fn).__name__
    dx, dw, db = torch.autograd.grad(out, (x, gn.weight, gn.bias), g)
    ref = reference(x, gn.weight, gn.bias, 8, gn.eps)
    rdx, rdw, rdb = torch.autograd.grad(ref, (x, gn.weight, gn.bias), g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(dx, rdx, rtol=1e-4, atol=1e-4 * rdx.abs().max().item())
    torch.testing.assert_close(dw, rdw, rtol=1e-4, atol=1e-4 * rdw.abs().max().item())
    torch.testing.assert_close(db, rdb, rtol=1e-4, atol=1e-4 * rdb.abs().max().item())
    # below the pixel threshold the module takes ATen's kernel, with the same result
    small = (torch.randn(2, 32, 7, 7)).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gn(small), reference(small, gn.weight, gn.bias, 8, gn.eps))


def test_bmm_attention_matches_softmax_qk_v():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(5), dim=-1) @ v
    torch.testing.assert_close(U._Attention.apply(q, k, v), ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(U._Attention.apply, (q, k, v))
    # non-contiguous q, k, v views as the U-Net passes them
    qkv = torch.randn(2, 49, 3, 4, 32, requires_grad=True)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1) @ v
    out = U._Attention.apply(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    go = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, go)[0], torch.autograd.grad(ref, qkv, go)[0],
                               rtol=1e-5, atol=1e-5)


def test_subpixel_upsampling_matches_nearest_then_conv():
    torch.manual_seed(0)
    up = U._Upsample(6).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.testing.assert_close(up(x.contiguous(memory_format=fmt)), ref, rtol=1e-12, atol=1e-12)
    xr = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: U._Interleave.apply(
        F.conv2d(x, U._subpixel_weight(w), b.repeat(4), padding=1)), (xr, up.conv.weight, up.conv.bias))


def test_dropout_rate_scale_and_determinism():
    x = torch.ones(8, 16, 28, 28).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(3)
    a = U._dropout(x, 0.1, True)
    torch.manual_seed(3)
    b = U._dropout(x, 0.1, True)
    assert torch.equal(a, b)
    p_eff = 3277 / 32768
    kept = a != 0
    torch.testing.assert_close(a[kept], torch.full_like(a[kept], 1.0 / (1.0 - p_eff)))
    n = x.numel()
    frac = 1.0 - kept.sum().item() / n
    assert abs(frac - p_eff) < 5 * math.sqrt(p_eff * (1 - p_eff) / n)
    # masks of neighbouring elements are independent (the 4 int16 chunks of one 64-bit draw)
    flat = kept.permute(0, 2, 3, 1).reshape(-1, 4).float()
    corr = torch.corrcoef(flat.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02
    assert U._dropout(x, 0.1, False) is x
    assert U._dropout(x, 0.0, True) is x
    # NCHW input and tiny rates take the right paths
    for p in (0.5, 1e-6):  # 1e-6 < 2^-16: uniform floats
        y = U._dropout(torch.ones(2, 3, 4, 5), p, True)
        torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1.0 / (1.0 - p)))


def test_residual_block_with_dropout_matches_plain_dropout_then_conv():
    """Train mode: the 1 / (1 - p) scale folded into conv2's weight gives conv2(dropout(a)) for the same mask."""
    torch.manual_seed(0)
    block = U.ResidualBlock(16, 32, 64, dropout=0.1).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 16, 28, 28).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 64)
    torch.manual_seed(5)
    out = block(x, emb)
    torch.manual_seed(5)
    h = block.conv1(F.silu(F.group_norm(x, 8, block.norm1.weight, block.norm1.bias))) + block.emb(emb)[:, :, None, None]
    a = U._dropout(F.silu(F.group_norm(h, 8, block.norm2.weight, block.norm2.bias)), 0.1, True)
    ref = block.conv2(a) + block.skip(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unet_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        UNet(8, (1,), (False,), dropout=1.0)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_bf16_autocast_forward_and_backward_stay_finite_and_close_to_float32(num_classes):
    """The trainer runs the U-Net under bf16 autocast on a GPU. The mixed dtypes it creates (bf16 convs and linears,
    float32 norms and residual sums, bf16/float32 skip concatenation) are exercised here under CPU autocast: the
    step runs, every gradient is finite, and the output is the float32 output to bf16 accuracy."""
    torch.manual_seed(0)
    model = UNet(16, (1, 2, 4), (False, True, True), dropout=0.0, num_classes=num_classes).eval()
    for p in model.out.parameters():  # the zero-initialised output conv would make the comparison trivial
        nn.init.normal_(p, std=0.05)
    x, k = torch.randn(4, 1, 28, 28), torch.randint(0, 1000, (4,))
    y = torch.randint(0, num_classes, (4,)) if num_classes else None
    ref = model(x, k, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, k, y)
        loss = F.mse_loss(out.float(), torch.zeros_like(x))
    loss.backward()
    assert out.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
