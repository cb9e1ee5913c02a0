"""The native GroupNorm kernel (classdiff.images.native, _native/groupnorm.c) against float64 PyTorch references:
values and all gradients with and without SiLU, input offset and dropout; the dropout mask's statistics and its
regeneration in the backward; independence of the thread count; the U-Net's residual block through it; the build
cache and the fallbacks."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from classdiff.images import native
from classdiff.images import unet as U

needs_kernel = pytest.mark.skipif(not native.available(), reason="native kernel unavailable")


def test_kernel_builds_where_a_compiler_exists():
    """With a C compiler on the PATH the kernel must build (a silent fallback would hide a broken build)."""
    if os.environ.get("CLASSDIFF_NATIVE") == "0" or native._compiler() is None:
        pytest.skip("no C compiler, or CLASSDIFF_NATIVE=0")
    assert native.available(), native.build_info()
    assert "kernels-" in native.build_info()


def _reference(x, w, b, groups, eps, silu, offset, keep):
    """float64 F.group_norm(x + offset) (then F.silu) times the 0/1 ``keep`` mask."""
    u = x if offset is None else x + offset[:, :, None, None]
    y = F.group_norm(u, groups, w, b, eps)
    y = F.silu(y) if silu else y
    return y if keep is None else y * keep


CASES = [  # (channels, groups, side, silu, offset, dropout)
    (32, 8, 28, True, True, 0.1),
    (32, 8, 28, True, False, 0.0),
    (96, 8, 28, True, True, 0.3),
    (64, 8, 14, False, True, 0.0),
    (64, 8, 14, False, False, 0.2),
    (128, 8, 7, True, True, 0.1),
    (24, 8, 5, True, True, 0.5),   # C/G = 3, 24 = 3 vectors of 8
    (12, 4, 3, False, False, 0.5),  # C not a multiple of 8: the scalar tail
    (20, 5, 4, True, True, 0.0),   # C/G = 4, one vector + a tail of 4
]


@needs_kernel
@pytest.mark.parametrize(("c", "groups", "side", "silu", "with_offset", "p"), CASES)
def test_forward_and_gradients_match_float64_reference(c, groups, side, silu, with_offset, p):
    torch.manual_seed(0)
    x = (torch.randn(3, c, side, side) * 3 + 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(c) + 1).requires_grad_()
    b = torch.randn(c).requires_grad_()
    e = torch.randn(3, c).requires_grad_() if with_offset else None
    g = torch.randn(3, c, side, side)
    thr = native.dropout_threshold(p)
    y = U._GroupNormNative.apply(x, w, b, e, groups, 1e-5, silu, 1234, thr)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(g)
    keep = (y != 0).double() if thr else None  # a kept silu(z) or z is never exactly 0 here
    inputs = [x, w, b] + ([e] if with_offset else [])
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref = _reference(ref_in[0], ref_in[1], ref_in[2], groups, 1e-5, silu, ref_in[3] if with_offset else None, keep)
    ref.backward(g.double())
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for name, t, r in zip(("x", "weight", "bias", "offset"), inputs, ref_in):
        scale = r.grad.abs().max().item()
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


@needs_kernel
def test_dropout_mask_rate_independence_and_regeneration():
    """Drop rate within 5 binomial sigmas of threshold / 2^24; neighbouring elements (channels, pixels) and two
    seeds uncorrelated; the same seed repeats the mask; the backward zeroes exactly the dropped elements."""
    p = 0.1
    thr = native.dropout_threshold(p)
    assert thr == 1677722 and abs(thr / 2**24 - p) < 2**-24
    c = 32
    x = torch.randn(16, c, 28, 28).contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(c), torch.zeros(c)
    y1, _, _ = native.group_norm_forward(x, w, b, 8, 1e-5, True, None, 7, thr)
    y2, _, _ = native.group_norm_forward(x, w, b, 8, 1e-5, True, None, 7, thr)
    y3, _, _ = native.group_norm_forward(x, w, b, 8, 1e-5, True, None, 8, thr)
    assert torch.equal(y1, y2)
    k1, k3 = (y1 != 0), (y3 != 0)
    n = k1.numel()
    p_eff = thr / 2**24
    assert abs((1 - k1.float().mean().item()) - p_eff) < 5 * math.sqrt(p_eff * (1 - p_eff) / n)
    nhwc = k1.permute(0, 2, 3, 1).float()  # (B, H, W, C): memory order
    pairs = {"channel": (nhwc[..., 1:], nhwc[..., :-1]), "pixel": (nhwc[:, :, 1:], nhwc[:, :, :-1]),
             "sample": (nhwc[1:], nhwc[:-1]), "seed": (k1.float(), k3.float())}
    for name, (a, bb) in pairs.items():
        corr = torch.corrcoef(torch.stack([a.flatten(), bb.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01, (name, corr)
    # backward: gradient 0 exactly where the forward dropped
    xg = x.clone().requires_grad_()
    y = U._GroupNormNative.apply(xg, w, b, None, 8, 1e-5, False, 7, thr)
    (dy,) = torch.autograd.grad(y, xg, torch.ones_like(y), retain_graph=True)
    yy = U._GroupNormNative.apply(xg, w, b, None, 8, 1e-5, False, 7, 0)
    ref = torch.autograd.grad(yy, xg, (y != 0).float())[0]
    torch.testing.assert_close(dy, ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(1)
    x = torch.randn(8, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    w, b, e = torch.randn(64), torch.randn(64), torch.randn(8, 64)
    g = torch.randn(8, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y, mean, rstd = native.group_norm_forward(x, w, b, 8, 1e-5, True, e, 3, 500000)
            grads = native.group_norm_backward(g, x, w, b, mean, rstd, 8, True, e, seed=3, drop_threshold=500000)
            out.append((y, *grads))
    finally:
        torch.set_num_threads(before)
    for other in out[1:]:
        for a, bb in zip(out[0], other):
            assert torch.equal(a, bb)


@needs_kernel
def test_residual_block_native_dropout_equals_its_definition():
    """Train mode through the kernel: conv2(keep * silu(GN(conv1(silu(GN(x))) + emb))) / (1 - p'), the mask drawn
    from the default generator's seed, and the PyTorch path's block for p = 0."""
    torch.manual_seed(0)
    block = U.ResidualBlock(16, 32, 64, dropout=0.1).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 16, 28, 28).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 64)
    torch.manual_seed(5)
    out = block(x, emb)
    torch.manual_seed(5)
    seed = native.draw_seed()
    thr = native.dropout_threshold(0.1)
    with torch.no_grad():
        h = block.conv1(F.silu(F.group_norm(x, 8, block.norm1.weight, block.norm1.bias)))
        e = block.emb(emb)
        masked, _, _ = native.group_norm_forward(h.contiguous(memory_format=torch.channels_last), block.norm2.weight,
                                                 block.norm2.bias, 8, block.norm2.eps, True, e, seed, thr)
        keep = (masked != 0).float()
        a = F.silu(F.group_norm(h + e[:, :, None, None], 8, block.norm2.weight, block.norm2.bias)) * keep
        ref = block.conv2(a / (1 - thr / 2**24)) + block.skip(x)
    assert 0.05 < 1 - keep.mean().item() < 0.15
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    block.dropout = 0.0
    with native.disabled():
        ref0 = block(x, emb)
    torch.testing.assert_close(block(x, emb), ref0, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_bad_inputs_are_named():
    x = torch.randn(2, 16, 4, 4)
    w, b = torch.ones(16), torch.zeros(16)
    with pytest.raises(ValueError, match="x: need a channels_last float32"):
        native.group_norm_forward(x, w, b, 8, 1e-5, False)
    xc = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="groups = 5"):
        native.group_norm_forward(xc, w, b, 5, 1e-5, False)
    with pytest.raises(ValueError, match="offset: need a contiguous float32 CPU tensor of shape"):
        native.group_norm_forward(xc, w, b, 8, 1e-5, False, torch.zeros(2, 15))
    with pytest.raises(ValueError, match="dropout p = 1.0"):
        native.dropout_threshold(1.0)
    with pytest.raises(ValueError, match="dropout = 0.1: GroupNorm applies dropout in the native kernel only"):
        with native.disabled():
            U.GroupNorm(8, 16, silu=True)(xc, dropout=0.1)


def test_fallbacks_without_a_compiler_or_with_a_failing_build(tmp_path, monkeypatch):
    """No compiler: load() is None, quietly; a compiler that fails: None with one RuntimeWarning naming the cause;
    the module then takes the PyTorch path. CLASSDIFF_NATIVE=0 switches the kernel off."""
    monkeypatch.setenv("CLASSDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None
    assert "no C compiler" in native.build_info()
    monkeypatch.setattr(native, "_state", {})
    false = shutil.which("false")
    if false is not None:
        monkeypatch.setenv("CC", false)
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert native.load() is None
        gn = U.GroupNorm(8, 16, silu=True)
        x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
        assert "Native" not in type(gn(x).grad_fn).__name__
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.delenv("CC")
    monkeypatch.setenv("CLASSDIFF_NATIVE", "0")
    assert native.load() is None


@needs_kernel
def test_build_is_cached_and_reused_by_a_new_process(tmp_path):
    """A fresh cache folder gets one library, written atomically (no temporary left), which a second process loads
    without compiling (same file, same modification time); a damaged one is rebuilt without a warning."""
    env = dict(os.environ, CLASSDIFF_CACHE=str(tmp_path))
    code = "from classdiff.images import native; assert native.available(), native.build_info(); " \
           "print(native.build_info().split(' ')[0])"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path = first.stdout.strip()
    assert path.startswith(str(tmp_path / "native"))
    mtime = os.stat(path).st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert second.stdout.strip() == path and os.stat(path).st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "native").iterdir()] == [os.path.basename(path)]
    # a damaged cached library is built again (once), and then loads
    with open(path, "wb") as f:
        f.write(b"not a shared library")
    third = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True,
                           check=True)
    assert third.stdout.strip() == path and os.path.getsize(path) > 1000


@needs_kernel
@pytest.mark.parametrize(("b", "n", "heads", "d"), [(3, 196, 2, 32), (2, 49, 4, 32), (2, 13, 1, 16), (1, 100, 3, 24),
                                                   (2, 7, 2, 8), (1, 1, 1, 8)])
def test_attention_matches_float64_softmax_attention(b, n, heads, d):
    """out, the row log-sum-exps and d qkv against softmax(Q K^T / sqrt(D)) V in float64 (N not a multiple of the
    6 x 16 tiles, D of 1 to 4 vectors, a single token)."""
    torch.manual_seed(0)
    c = heads * d
    qkv = torch.randn(b, n, 3 * c) * 1.5
    out, lse = native.attention_forward(qkv, heads)
    g = torch.randn(b, n, c)
    dqkv = native.attention_backward(g, qkv, out, lse, heads)
    q64 = qkv.double().requires_grad_()
    q, k, v = q64.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    ref = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, n, c)
    ref.backward(g.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dqkv.double(), q64.grad, rtol=1e-5, atol=1e-5 * q64.grad.abs().max().item())


@needs_kernel
def test_attention_module_takes_the_kernel_and_matches_the_pytorch_path():
    torch.manual_seed(0)
    att = U.SelfAttention(64).to(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = att(x)
    assert any("AttentionNative" in type(f).__name__ for f in _graph(out.grad_fn))
    with native.disabled():
        ref = att(x)
    g = torch.randn_like(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out, [x, *att.parameters()], g)
    refs = torch.autograd.grad(ref, [x, *att.parameters()], g)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    with pytest.raises(ValueError, match="heads = 3"):
        native.attention_forward(torch.randn(2, 5, 3 * 64), 3)


def _graph(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is None or fn in seen:
        return seen
    seen.add(fn)
    for nxt, _ in fn.next_functions:
        _graph(nxt, seen)
    return seen


CONVS = [  # (batch, in, side, out, kernel, stride, padding)
    (3, 16, 9, 8, 3, 1, 1),
    (2, 24, 10, 13, 3, 2, 1),   # stride 2, O not a multiple of the 6-channel tile
    (2, 8, 5, 20, 2, 1, 1),     # the sub-pixel upsampling's 2 x 2 kernel, output (H + 1) x (W + 1)
    (2, 40, 6, 7, 1, 1, 0),     # 1 x 1 skip, I = 40: two and a half 16-channel tiles
    (4, 32, 7, 32, 3, 1, 1),
]


@needs_kernel
@pytest.mark.parametrize(("b", "ci", "side", "co", "k", "s", "p"), CONVS)
def test_conv_weight_gradient_matches_float64_convolution(b, ci, side, co, k, s, p):
    torch.manual_seed(0)
    x = torch.randn(b, ci, side, side).contiguous(memory_format=torch.channels_last)
    ho = (side + 2 * p - k) // s + 1
    g = torch.randn(b, co, ho, ho).contiguous(memory_format=torch.channels_last)
    dw, db = native.conv_weight_grad(x, g, (k, k), s, p)
    assert dw.is_contiguous(memory_format=torch.channels_last)
    w64 = torch.zeros(co, ci, k, k, dtype=torch.float64, requires_grad=True)
    b64 = torch.zeros(co, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), w64, b64, s, p).backward(g.double())
    torch.testing.assert_close(dw.double(), w64.grad, rtol=1e-5, atol=1e-5 * w64.grad.abs().max().item())
    torch.testing.assert_close(db.double(), b64.grad, rtol=1e-5, atol=1e-5 * b64.grad.abs().max().item())
    with pytest.raises(ValueError, match="shapes do not match"):
        native.conv_weight_grad(x, g, (k + 2, k), s, p)


@needs_kernel
def test_conv_module_gradients_match_aten_and_repeat_for_a_thread_count():
    """U-Net Conv2d through _Conv2dNative: output, input, weight and bias gradients equal ATen's; the same inputs
    and thread count give bitwise the same weight gradient."""
    torch.manual_seed(0)
    conv = U.Conv2d(32, 16, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = conv(x)
    assert "Conv2dNative" in type(out.grad_fn).__name__
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    ref_out = F.conv2d(x, conv.weight, conv.bias, 2, 1)
    refs = torch.autograd.grad(ref_out, (x, conv.weight, conv.bias), g)
    torch.testing.assert_close(out, ref_out)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5 * r.abs().max().item())
    again = torch.autograd.grad(conv(x), conv.weight, g)[0]
    assert torch.equal(again, grads[1])
    with torch.no_grad():  # no gradient wanted: plain F.conv2d
        assert conv(x).grad_fn is None
