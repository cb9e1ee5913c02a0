"""The U-Net's native CPU kernels, in C (``_native/*.c``; the formulas are in each file's header), forward and
backward, float32:

* ``groupnorm.c``: GroupNorm (+ SiLU, + a per-(sample, channel) input offset, + dropout) of channels_last tensors.
  In PyTorch ops a GroupNorm-SiLU forward and backward takes some twenty passes over the activation (moments,
  scale-and-shift, SiLU, its gradient, the per-channel sums of the backward, each a separate kernel with its
  temporaries); the kernel takes two passes per direction over each sample's block, which stays in the L2 cache
  in between.
* ``attention.c``: multi-head softmax attention of short sequences straight from the (B, N, 3C) output of the
  input projection to the (B, N, C) input of the output projection (no head transposes, no stacking of the
  q, k, v gradients), the N x N probabilities recomputed in the backward per (sample, head) in cache, the
  products register-tiled for AVX2/FMA.
* ``conv.c``: the weight and bias gradients of a small-kernel convolution of channels_last tensors, register tiles
  walking cache-sized blocks of output rows (the forward and the input gradient stay with oneDNN).

The figures are in the U-Net module docstring (measured with ``benchmarks/bench_unet.py``).

Build: on first use in a process, the sources are compiled with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang`` on the PATH; ``-O3 -march=native``) into the user cache, ``$CLASSDIFF_CACHE/native``
(default ``~/.cache/classdiff/native``), under a name that hashes the source, the compiler, the flags and the
CPU, written atomically (temporary file + ``os.replace``), so later processes load it in milliseconds and
concurrent ones do not clash (a cached library that does not load is rebuilt once). Threads: when PyTorch has
loaded GNU OpenMP (``libgomp``, as its Linux wheels do) the kernels are compiled with OpenMP and linked against
that same runtime, so that they share PyTorch's thread pool (``torch.get_num_threads()`` threads; nothing
oversubscribed); otherwise, or where that build fails, they run single-threaded.

Dropout: the mask comes from a 32-bit hash of (seed, sample, element), so the backward regenerates it rather than
storing it; the seed is drawn from PyTorch's default generator by the caller (:func:`draw_seed`), so seeded runs
repeat exactly. The drop probability is p rounded to a multiple of 2^-24 (:func:`dropout_threshold`; 0.1 ->
0.10000002), and the 1 / (1 - p) scale is left to the caller (the U-Net folds it into the next conv's weight).

Fallback: :func:`load` returns ``None`` where no compiler is found, the build fails (one warning says why) or
``CLASSDIFF_NATIVE=0`` is set; the U-Net then takes its PyTorch path (same results to float32 rounding).
:func:`disabled` switches the kernel off within a block (tests compare both paths).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "attention_backward",
    "attention_forward",
    "available",
    "build_info",
    "conv_weight_grad",
    "disabled",
    "draw_seed",
    "dropout_threshold",
    "group_norm_backward",
    "group_norm_forward",
    "load",
]

SOURCE_DIR = Path(__file__).with_name("_native")
SOURCES = ("groupnorm.c", "attention.c", "conv.c")  # compiled into one library; common.h is shared
HEADERS = ("common.h", "gemm.h")
ABI_VERSION = 4
DROP_BITS = 24  # dropout resolution: p is rounded to a multiple of 2^-DROP_BITS
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-trapping-math"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": ctypes.CDLL | None, "info": str
_off = threading.local()


def _cache_root() -> Path:
    from classdiff.data.fashion_mnist import cache_dir

    return cache_dir() / "native"


def _compiler() -> str | None:
    """The C compiler to use: ``$CC`` (its first word) or the first of cc, gcc, clang on the PATH."""
    cc = os.environ.get("CC", "").split()
    if cc:
        return shutil.which(cc[0])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _loaded_gomp() -> str | None:
    """The path of the GNU OpenMP runtime loaded in this process (PyTorch's), if any (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "libgomp" in os.path.basename(path) and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU model and flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "flags", "Features")):
                    sig += line
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return sig


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _build(cc: str, gomp: str | None, rebuild: bool = False) -> tuple[Path | None, str]:
    """Compile the kernels (or find them in the cache, unless ``rebuild``); (path, description) or (None, why not).
    Flag sets are tried in order: with OpenMP (where ``gomp`` is given) and -march=native, then without
    -march=native (compilers that do not take it), then the same single-threaded."""
    version = _run([cc, "--version"]).stdout.splitlines()[:1]
    source = b"".join((SOURCE_DIR / name).read_bytes() for name in SOURCES + HEADERS)
    attempts = [(arch, omp) for omp in ([gomp, None] if gomp else [None]) for arch in (["-march=native"], [])]
    errors = []
    for arch, omp in attempts:  # omp: the OpenMP runtime to link, or None
        flags = FLAGS + arch + (["-fopenmp"] if omp else [])
        key = hashlib.sha256(repr((source, cc, version, flags, omp, _cpu_signature(), ABI_VERSION)).encode())
        folder = _cache_root()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = Path(tempfile.gettempdir()) / f"classdiff-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
            folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"kernels-{key.hexdigest()[:16]}.so"
        desc = f"{target} ({' '.join(flags)}{'; OpenMP: ' + omp if omp else '; single-threaded'})"
        if target.exists() and not rebuild:
            return target, desc
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            objs = [Path(tmp) / f"{Path(name).stem}.o" for name in SOURCES]
            lib = Path(tmp) / "kernels.so"
            compile_flags = [f for f in flags if f != "-shared"]
            steps = [[cc, *compile_flags, "-c", str(SOURCE_DIR / name), "-o", str(obj)]
                     for name, obj in zip(SOURCES, objs, strict=True)]
            # link against the OpenMP runtime already loaded (PyTorch's), not the compiler's own copy
            link = [cc, "-shared", *map(str, objs), "-o", str(lib), "-lm"]
            if omp:
                link += [omp, f"-Wl,-rpath,{os.path.dirname(omp)}"]
            steps.append(link)
            for cmd in steps:
                res = _run(cmd)
                if res.returncode != 0:
                    errors.append(f"{' '.join(cmd)}: {res.stderr.strip()[-800:]}")
                    break
            else:
                os.replace(lib, target)
                return target, desc
    return None, "; ".join(errors)


def load() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use, then cached), or ``None`` (see the module docstring)."""
    if getattr(_off, "value", False) or os.environ.get("CLASSDIFF_NATIVE", "1") == "0":
        return None
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, info = None, ""
        cc = _compiler()
        if cc is None:
            info = "no C compiler found ($CC, cc, gcc, clang)"
        elif not all((SOURCE_DIR / name).exists() for name in SOURCES + HEADERS):
            info = f"kernel sources missing in {SOURCE_DIR}"
        else:
            import torch  # noqa: F401  (load PyTorch's OpenMP runtime first, so that the kernel links against it)

            gomp = _loaded_gomp() if sys.platform.startswith("linux") else None
            for rebuild in (False, True):  # a cached library that does not load is built again, once
                try:
                    path, info = _build(cc, gomp, rebuild)
                    if path is not None:
                        lib = _bind(ctypes.CDLL(str(path)))
                        info = info if lib is not None else f"{path}: wrong ABI version"
                    break
                except (OSError, subprocess.SubprocessError) as exc:
                    lib, info = None, f"{type(exc).__name__}: {exc}"
            if lib is None:
                warnings.warn(f"classdiff: the native CPU kernels could not be built, the U-Net uses its "
                              f"PyTorch path on CPU (slower): {info}", RuntimeWarning, stacklevel=2)
        _state["lib"], _state["info"] = lib, info
        return lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL | None:
    if lib.cd_abi_version() != ABI_VERSION:
        return None
    p, i64, i, u64, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32
    lib.cd_group_norm_forward.argtypes = [p, p, p, p, p, p, p, i64, i64, i64, i64, ctypes.c_double, i, u64, u32, i]
    lib.cd_group_norm_forward.restype = i
    lib.cd_group_norm_backward.argtypes = [p, p, p, p, p, p, p, p, p, p, p, i64, i64, i64, i64, i, u64, u32, i]
    lib.cd_group_norm_backward.restype = i
    lib.cd_attention_forward.argtypes = [p, p, p, i64, i64, i64, i64, i]
    lib.cd_attention_forward.restype = i
    lib.cd_attention_backward.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i]
    lib.cd_attention_backward.restype = i
    lib.cd_conv_weight_grad.argtypes = [p, p, p, p] + [i64] * 11 + [i]
    lib.cd_conv_weight_grad.restype = i
    return lib


def available() -> bool:
    """Whether the kernel is usable in this process (building it if needed)."""
    return load() is not None


def build_info() -> str:
    """Where the loaded kernel lives and how it was built, or why there is none."""
    load()
    return str(_state.get("info", ""))


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block (this thread only), :func:`load` returns ``None``: the U-Net takes its PyTorch path."""
    before = getattr(_off, "value", False)
    _off.value = True
    try:
        yield
    finally:
        _off.value = before


def dropout_threshold(p: float) -> int:
    """The kernel's integer drop threshold for probability ``p``: round(p 2^24); the element is dropped with
    probability ``threshold / 2^24``. 0 (no dropout) for p = 0; p must round into (0, 1)."""
    if p == 0.0:
        return 0
    thr = round(p * (1 << DROP_BITS))
    if not 0 < thr < (1 << DROP_BITS):
        raise ValueError(f"dropout p = {p}: the native kernel takes 2^-25 <= p < 1 - 2^-25 (or p = 0)")
    return thr


def draw_seed() -> int:
    """A 64-bit dropout seed from PyTorch's default CPU generator (so that ``torch.manual_seed`` fixes the masks)."""
    import torch

    return int(torch.empty((), dtype=torch.int64).random_()) & 0xFFFFFFFFFFFFFFFF


def _ptr(t) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _check(x, groups: int, weight, bias, offset) -> tuple[int, int, int]:
    import torch

    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu" or \
            not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"x: need a channels_last float32 CPU tensor (B, C, H, W), got {tuple(x.shape)} {x.dtype} "
                         f"{x.device}")
    b, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"groups = {groups}: must divide the {c} channels")
    for name, t, shape in (("weight", weight, (c,)), ("bias", bias, (c,)), ("offset", offset, (b, c))):
        if t is not None and (tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous()
                              or t.device.type != "cpu"):
            raise ValueError(f"{name}: need a contiguous float32 CPU tensor of shape {shape}, got "
                             f"{tuple(t.shape)} {t.dtype}")
    return b, c, h * w


def group_norm_forward(x, weight, bias, groups: int, eps: float, silu: bool, offset=None, seed: int = 0,
                       drop_threshold: int = 0):
    """(y, mean, rstd): y (B, C, H, W) channels_last = silu?(GroupNorm(x + offset[:, :, None, None])) times the dropout
    mask of (``seed``, ``drop_threshold``) when the threshold is not 0 (unscaled), mean and rstd (B, G) float64 the
    group moments. ``x`` channels_last float32 (B, C, H, W); ``weight``, ``bias`` (C,); ``offset`` (B, C) or None."""
    import torch

    lib = load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {build_info()}")
    b, c, p = _check(x, groups, weight, bias, offset)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean = torch.empty(b, groups, dtype=torch.float64)
    rstd = torch.empty(b, groups, dtype=torch.float64)
    rc = lib.cd_group_norm_forward(_ptr(x), _ptr(offset), _ptr(weight), _ptr(bias), _ptr(y), _ptr(mean), _ptr(rstd),
                                   b, p, c, groups, float(eps), int(silu), seed, drop_threshold,
                                   torch.get_num_threads())
    if rc != 0:
        raise MemoryError("native GroupNorm forward: out of scratch memory")
    return y, mean, rstd


def group_norm_backward(grad, x, weight, bias, mean, rstd, groups: int, silu: bool, offset=None,
                        need_input: bool = True, seed: int = 0, drop_threshold: int = 0):
    """(dx, dweight, dbias, doffset) of :func:`group_norm_forward` (same ``seed`` and ``drop_threshold``) from the
    output gradient ``grad`` (B, C, H, W);
    dx (channels_last) and doffset ((B, C), when ``offset`` is given) are ``None`` when ``need_input`` is false."""
    import torch

    lib = load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {build_info()}")
    b, c, p = _check(x, groups, weight, bias, offset)
    grad = grad.contiguous(memory_format=torch.channels_last)
    if grad.dtype != torch.float32 or grad.shape != x.shape:
        raise ValueError(f"grad: need float32 of shape {tuple(x.shape)}, got {tuple(grad.shape)} {grad.dtype}")
    dx = torch.empty_like(x, memory_format=torch.channels_last) if need_input else None
    dw = torch.empty(b, c, dtype=torch.float64)
    db = torch.empty(b, c, dtype=torch.float64)
    doff = torch.empty(b, c, dtype=torch.float64) if (need_input and offset is not None) else None
    rc = lib.cd_group_norm_backward(_ptr(grad), _ptr(x), _ptr(offset), _ptr(weight), _ptr(bias), _ptr(mean),
                                    _ptr(rstd), _ptr(dx), _ptr(dw), _ptr(db), _ptr(doff), b, p, c, groups, int(silu),
                                    seed, drop_threshold, torch.get_num_threads())
    if rc != 0:
        raise MemoryError("native GroupNorm backward: out of scratch memory")
    return (dx, dw.sum(0).to(torch.float32), db.sum(0).to(torch.float32),
            None if doff is None else doff.to(torch.float32))


def _check_qkv(qkv, heads: int) -> tuple[int, int, int]:
    import torch

    if qkv.dim() != 3 or qkv.dtype != torch.float32 or qkv.device.type != "cpu" or not qkv.is_contiguous():
        raise ValueError(f"qkv: need a contiguous float32 CPU tensor (B, N, 3 C), got {tuple(qkv.shape)} {qkv.dtype}")
    b, n, c3 = qkv.shape
    if heads < 1 or c3 % (3 * heads) or (c3 // (3 * heads)) % 8:
        raise ValueError(f"heads = {heads}: 3 C = {c3} must be 3 heads D with the head dimension D a multiple of 8")
    return b, n, c3 // 3


def attention_forward(qkv, heads: int):
    """(out, lse): out (B, N, C) = per head softmax(Q K^T / sqrt(D)) V from ``qkv`` (B, N, 3 C) laid out as
    [q | k | v] with head h in columns h D .. (h + 1) D - 1 of each third (C = heads D, D a multiple of 8);
    lse (B, heads, N) the log-sum-exp of each row of the scaled scores, for :func:`attention_backward`."""
    import torch

    lib = load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {build_info()}")
    b, n, c = _check_qkv(qkv, heads)
    out = torch.empty(b, n, c, dtype=torch.float32)
    lse = torch.empty(b, heads, n, dtype=torch.float32)
    if lib.cd_attention_forward(_ptr(qkv), _ptr(out), _ptr(lse), b, n, heads, c // heads,
                                torch.get_num_threads()) != 0:
        raise MemoryError("native attention forward: out of scratch memory")
    return out, lse


def attention_backward(grad, qkv, out, lse, heads: int):
    """d qkv (B, N, 3 C) of :func:`attention_forward` from the output gradient ``grad`` (B, N, C)."""
    import torch

    lib = load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {build_info()}")
    b, n, c = _check_qkv(qkv, heads)
    grad = grad.contiguous()
    for name, t, shape in (("grad", grad, (b, n, c)), ("out", out, (b, n, c)), ("lse", lse, (b, heads, n))):
        if tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name}: need a contiguous float32 tensor of shape {shape}, got {tuple(t.shape)}")
    dqkv = torch.empty_like(qkv)
    if lib.cd_attention_backward(_ptr(qkv), _ptr(out), _ptr(grad), _ptr(lse), _ptr(dqkv), b, n, heads, c // heads,
                                 torch.get_num_threads()) != 0:
        raise MemoryError("native attention backward: out of scratch memory")
    return dqkv


def conv_weight_grad(x, grad, kernel: tuple[int, int], stride: int, padding: int, need_bias: bool = True):
    """(dweight, dbias) of a 2-D convolution with a ``kernel`` (KH, KW) weight, ``stride`` and zero ``padding`` from
    its input ``x`` (B, I, Hi, Wi) and output gradient ``grad`` (B, O, Ho, Wo), both channels_last float32 CPU
    (I a multiple of 8): dweight (O, I, KH, KW) channels_last, dbias (O,) or None."""
    import torch

    lib = load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {build_info()}")
    for name, t in (("x", x), ("grad", grad)):
        if t.dim() != 4 or t.dtype != torch.float32 or t.device.type != "cpu" or \
                not t.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"{name}: need a channels_last float32 CPU tensor (B, C, H, W), got {tuple(t.shape)} "
                             f"{t.dtype}")
    b, i, hi, wi = x.shape
    _, o, ho, wo = grad.shape
    kh, kw = kernel
    if grad.shape[0] != b or i % 8 or ho != (hi + 2 * padding - kh) // stride + 1 or \
            wo != (wi + 2 * padding - kw) // stride + 1:
        raise ValueError(f"x {tuple(x.shape)}, grad {tuple(grad.shape)}, kernel {kernel}, stride {stride}, padding "
                         f"{padding}: shapes do not match (or the input channels are not a multiple of 8)")
    dw = torch.empty(o, i, kh, kw, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    db = torch.empty(o, dtype=torch.float32) if need_bias else None
    if lib.cd_conv_weight_grad(_ptr(x), _ptr(grad), _ptr(dw), _ptr(db), b, hi, wi, i, ho, wo, o, kh, kw, stride,
                               padding, torch.get_num_threads()) != 0:
        raise MemoryError("native conv weight gradient: out of scratch memory")
    return dw, db

