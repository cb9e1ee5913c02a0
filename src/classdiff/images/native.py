"""The U-Net's native CPU kernel: GroupNorm (+ SiLU, + a per-(sample, channel) input offset, + dropout) of
channels_last float32 tensors, forward and backward, in C (``_native/groupnorm.c``; the formulas are in its header).

Why: on CPU the U-Net step is bound by memory traffic outside the convolutions. In PyTorch ops, a GroupNorm-SiLU
forward and backward takes some twenty passes over the activation (moments, scale-and-shift, SiLU, its gradient,
the per-channel sums of the backward, each a separate kernel with its temporaries); the C kernel takes two passes
per direction over each sample's block, which stays in the L2 cache in between. Measured with
``benchmarks/bench_unet.py`` (see the U-Net module docstring for the figures).

Build: on first use in a process, the source is compiled with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang`` on the PATH; ``-O3 -march=native``) into the user cache, ``$CLASSDIFF_CACHE/native``
(default ``~/.cache/classdiff/native``), under a name that hashes the source, the compiler, the flags and the
CPU, written atomically (temporary file + ``os.replace``), so later processes load it in milliseconds and
concurrent ones do not clash. Threads: when PyTorch has loaded GNU OpenMP (``libgomp``, as its Linux wheels do)
the kernel is compiled with OpenMP and linked against that same runtime, so that it shares PyTorch's thread pool
(``torch.get_num_threads()`` threads; nothing oversubscribed); otherwise it runs single-threaded.

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
    "available",
    "build_info",
    "disabled",
    "draw_seed",
    "dropout_threshold",
    "group_norm_backward",
    "group_norm_forward",
    "load",
]

SOURCE = Path(__file__).with_name("_native") / "groupnorm.c"
ABI_VERSION = 2
DROP_BITS = 24  # dropout resolution: p is rounded to a multiple of 2^-DROP_BITS
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-trapping-math"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": ctypes.CDLL | None, "info": str
_off = threading.local()


def _cache_root() -> Path:
    from classdiff.images.fashion_mnist import cache_dir

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


def _build(cc: str, gomp: str | None) -> tuple[Path | None, str]:
    """Compile the kernel (or find it in the cache); (path, description) or (None, why not)."""
    version = _run([cc, "--version"]).stdout.splitlines()[:1]
    source = SOURCE.read_bytes()
    attempts = [["-march=native"], []]  # without -march=native where the compiler does not take it
    errors = []
    for arch in attempts:
        flags = FLAGS + arch + (["-fopenmp"] if gomp else [])
        key = hashlib.sha256(repr((source, cc, version, flags, gomp, _cpu_signature(), ABI_VERSION)).encode())
        folder = _cache_root()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = Path(tempfile.gettempdir()) / f"classdiff-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
            folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"groupnorm-{key.hexdigest()[:16]}.so"
        desc = f"{target} ({' '.join(flags)}{'; OpenMP: ' + gomp if gomp else '; single-threaded'})"
        if target.exists():
            return target, desc
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            obj, lib = Path(tmp) / "groupnorm.o", Path(tmp) / "groupnorm.so"
            compile_flags = [f for f in flags if f != "-shared"]
            steps = [[cc, *compile_flags, "-c", str(SOURCE), "-o", str(obj)]]
            # link against the OpenMP runtime already loaded (PyTorch's), not the compiler's own copy
            link = [cc, "-shared", str(obj), "-o", str(lib), "-lm"]
            if gomp:
                link += [gomp, f"-Wl,-rpath,{os.path.dirname(gomp)}"]
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
        elif not SOURCE.exists():
            info = f"kernel source missing: {SOURCE}"
        else:
            import torch  # noqa: F401  (load PyTorch's OpenMP runtime first, so that the kernel links against it)

            gomp = _loaded_gomp() if sys.platform.startswith("linux") else None
            try:
                path, info = _build(cc, gomp)
                if path is not None:
                    lib = _bind(ctypes.CDLL(str(path)))
            except (OSError, subprocess.SubprocessError) as exc:
                lib, info = None, f"{type(exc).__name__}: {exc}"
            if lib is None:
                warnings.warn(f"classdiff: the native GroupNorm kernel could not be built, the U-Net uses its "
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
        raise RuntimeError(f"the native GroupNorm kernel is not available: {build_info()}")
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
        raise RuntimeError(f"the native GroupNorm kernel is not available: {build_info()}")
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
