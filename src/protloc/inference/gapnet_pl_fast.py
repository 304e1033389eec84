"""A faster, numerically equivalent GapNet-PL forward for CPU inference (and the same code on CUDA).

``FastGapNetPL(network)`` wraps a trained ``GapNetPL`` (it shares its parameters; nothing is copied
that is not re-derived when the parameters change) and computes the same logits from a *raw* batch
[N, 4, H, W]: the per-image, per-channel normalisation of ``protloc.inference.normalize`` (same
rule, same epsilon) is part of it. What makes it faster, each exact in real arithmetic (measured effects in BENCHMARKS.md):

* channels-last (NHWC) activations, the layout oneDNN's convolutions are fastest in on CPU, with
  the weights converted once (not at every call) and re-derived only when a parameter changes;
* SELU after max pooling instead of before it: SELU is strictly increasing, so
  ``max_pool(selu(x)) == selu(max_pool(x))``, and the exponential runs on a quarter of the values
  of the two largest feature maps; every other SELU runs in place (no new feature map allocated);
* the normalisation statistics in one chunked pass over the raw image (shifted sums, no image-sized
  temporary; ``torch.std_mean`` takes ~25x longer on a 2048² image: 92 against 3.6 ms), the division by the per-channel std
  folded into the first convolution's weights (zero padding of the centred image equals zero
  padding of the normalised one, so borders stay exact);
* the first block (centring, convolution, pooling, SELU) computed in horizontal strips: neither the
  centred channels-last copy of the image nor the 128 MiB pre-pooling map of a 2048² image ever
  exists as a whole. Large fresh buffers cost page faults on every call (glibc returns allocations
  above 32 MiB to the system when freed); small strip buffers stay in cache and are reused;
* optionally bfloat16 arithmetic (``precision="bf16"``, on CPUs with AVX512-BF16/AMX, or CUDA):
  logits then differ by ~0.3% of their range; the top class on the synthetic samples does not
  change. ``first_block_fp32=True`` keeps the first convolution (8% of the FLOPs, the one that sees
  the image at bfloat16's 8-bit resolution) in float32: half the error, ~4% more time.

``fast_network(network, precision=...)`` returns the wrapper for a GapNet-PL and ``None`` for any
other network (callers then use the plain forward, under bf16 autocast for ``precision="bf16"``).
Levers that were measured and lost (torch.compile, oneDNN weight pre-packing) are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import threading
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.inference.normalization import EPSILON
from protloc.inference.precision import check_precision

# The precisions this path computes in (int8 is ONNX Runtime's graph, ``protloc.inference.int8``).
FAST_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _check_fast(precision: str) -> str:
    if check_precision(precision) not in FAST_PRECISIONS:
        raise ProtlocError(f"GapNet-PL's fast path runs {', '.join(FAST_PRECISIONS)}, not {precision}")
    return precision
from protloc.models.gapnet_pl import GapNetPL
# Conv-output rows of the first convolution per strip. 64 rows of a 2048-wide image: a 129 x 2048 x 4
# centred input strip (4 MiB) and a 64 x 1024 x 32 output strip (8 MiB), both reused from strip to
# strip and cache-resident.
DEFAULT_STRIP_ROWS = 64
# Pixels per chunk of the statistics' fallback pass (a 4 MiB temporary for four channels).
_STATS_CHUNK = 1 << 18
_ROW = 4096


_compiled_selu = None
# Why compiling SELU failed in this process (None: it has not failed). Tests read it.
compiled_selu_error: str | None = None


def _selu_flat_(values: torch.Tensor) -> torch.Tensor:
    values.copy_(F.selu(values))
    return values


def _selu_(x: torch.Tensor, compiled: bool) -> torch.Tensor:
    """SELU in place; ``compiled``: one inductor kernel over the flat storage (compiled once per
    process for any size, ~2.5x faster than ATen's elu on CPU), ATen when compilation is unavailable."""
    global _compiled_selu, compiled_selu_error
    if compiled and compiled_selu_error is None:
        if x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4:
            flat = x.permute(0, 2, 3, 1).reshape(-1)
        elif x.is_contiguous():
            flat = x.view(-1)
        else:
            flat = None
        if flat is not None and flat.data_ptr() == x.data_ptr():
            try:
                if _compiled_selu is None:
                    _compiled_selu = torch.compile(_selu_flat_, dynamic=True)
                _compiled_selu(flat)
                return x
            except Exception as exc:  # no C++ compiler, unsupported platform: ATen from now on, said once
                compiled_selu_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                warnings.warn(f"--compile-selu: compiling SELU failed ({compiled_selu_error}); GapNet-PL runs "
                              "the uncompiled SELU from now on (same results, 5-10% slower)", RuntimeWarning,
                              stacklevel=2)
    return F.selu(x, inplace=True)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2/2 max pooling (ceil mode). Channels-last maps of even size: two element-wise maxima over
    row pairs, then column pairs (2-3x faster than ``max_pool2d``, which also writes int64 indices);
    anything else: ``F.max_pool2d``."""
    n, c, h, w = x.shape
    if h % 2 or w % 2 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_cuda:
        return F.max_pool2d(x, 2, ceil_mode=True)
    rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w, c)
    pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1]).view(n, h // 2, w // 2, 2, c)
    return torch.maximum(pairs[:, :, :, 0], pairs[:, :, :, 1]).permute(0, 3, 1, 2)


def _sums(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares over the last dim of [N, C, L] float32, in float64 [N, C].

    Reduced in rows of 4096 (one vectorised pass, no temporaries), the row results added in
    float64: a relative error ~1e-8, where one reduction over millions of values in float32 errs
    by ~1e-4 (``torch.linalg.vector_norm`` over a 2048² plane).
    """
    n, c, length = values.shape
    main = length - length % _ROW
    total = torch.zeros((n, c), dtype=torch.float64, device=values.device)
    squares = torch.zeros((n, c), dtype=torch.float64, device=values.device)
    for part, row in ((values[:, :, :main], _ROW), (values[:, :, main:], length - main)):
        if row:
            rows = part.reshape(n, c, -1, row)
            total += rows.sum(dim=3).double().sum(dim=2)
            squares += torch.linalg.vector_norm(rows, dim=3).double().square().sum(dim=2)
    return total, squares


def image_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and population std of [N, C, H, W] float32, as [N, C, 1, 1].

    Fast case: the sum and the sum of squares of the raw values (two vectorised reductions without
    temporaries). Where the mean is large against the std (mean² > 15 var, so E[x²] - E[x]² would lose
    digits), the statistics are recomputed from x - K in chunks, K the mean: as stable as
    ``torch.std_mean``, which takes ~25x longer on a 2048² image.
    """
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    count = flat.shape[2]
    total, squares = _sums(flat)
    mean = total / count
    variance = squares / count - mean.square()
    if bool((mean.square() > 15.0 * variance).any()):
        shift = mean.float().unsqueeze(2)
        total = torch.zeros_like(mean)
        squares = torch.zeros_like(mean)
        for chunk in flat.split(_STATS_CHUNK, dim=2):
            chunk_total, chunk_squares = _sums(chunk - shift)
            total += chunk_total
            squares += chunk_squares
        offset = total / count
        mean = shift.squeeze(2).double() + offset
        variance = squares / count - offset.square()
    std = variance.clamp_min(0.0).sqrt()
    return mean.float().reshape(n, c, 1, 1), std.float().reshape(n, c, 1, 1)


class FastGapNetPL(nn.Module):
    """GapNet-PL logits from raw images [N, 4, H, W], fast path; see the module docstring.

    The keyword options switch single levers off for the benchmark (``channels_last``,
    ``pool_first``, ``strip_rows=None`` for one whole first convolution).
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        precision: str = "fp32",
        channels_last: bool = True,
        pool_first: bool = True,
        strip_rows: int | None = DEFAULT_STRIP_ROWS,
        compile_selu: bool = False,
        first_block_fp32: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(network, GapNetPL):
            raise ProtlocError(f"the fast inference path is for GapNet-PL, not {getattr(network, 'name', network)}")
        _check_fast(precision)
        if strip_rows is not None and (strip_rows < 2 or strip_rows % 2):
            raise ProtlocError(f"strip_rows must be an even number >= 2, got {strip_rows}")
        self.network = network
        self.precision = precision
        self.channels_last = channels_last
        self.pool_first = pool_first
        self.strip_rows = strip_rows
        self.compile_selu = compile_selu
        self.first_block_fp32 = first_block_fp32 and precision != "fp32"
        self.num_classes = network.num_classes
        self.in_channels = network.in_channels
        self._weights_key = None
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._local = threading.local()

    # -- layout and weights ---------------------------------------------------------------------
    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def _dtype(self) -> torch.dtype:
        return FAST_PRECISIONS[self.precision]

    def _converted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """conv2..conv8 weights in the working dtype and layout, re-derived when a parameter changes."""
        layers = [getattr(self.network, f"conv{i}") for i in range(2, 9)]
        key = tuple((p.data_ptr(), p._version, p.device) for layer in layers for p in (layer.weight, layer.bias))
        if key != self._weights_key:
            with torch.no_grad():
                weights = {
                    f"conv{i}": (
                        layer.weight.detach().to(self._dtype).contiguous(memory_format=self._memory_format),
                        layer.bias.detach().to(self._dtype),
                    )
                    for i, layer in zip(range(2, 9), layers)
                }
            self._weights, self._weights_key = weights, key
        return self._weights

    def _workspace(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The block-1 output buffer, kept per thread between calls of the same size: a fresh 32 MiB
        buffer (2048² image) is page-faulted in on every call (glibc maps allocations above 32 MiB
        afresh), which costs 6x the time of writing it. One buffer per thread, replaced on a new size."""
        key = (shape, dtype, device, self._memory_format)
        cached = getattr(self._local, "workspace", None)
        if cached is None or cached[0] != key:
            cached = (key, torch.empty(shape, dtype=dtype, device=device, memory_format=self._memory_format))
            self._local.workspace = cached
        return cached[1]

    # -- the network ----------------------------------------------------------------------------
    def _pool_selu(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            return _selu_(_max_pool2(x), self.compile_selu)
        return F.max_pool2d(F.selu(x), 2, ceil_mode=True)

    def _block1(self, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """max_pool(selu(conv1(normalised))) for raw x [N, C, H, W], optionally in strips, and its
        global average [N, 32] in float32 (summed strip by strip while each strip is in cache).
        The map lives in a per-thread workspace that the next call overwrites."""
        conv = self.network.conv1
        batch, channels, height, width = x.shape
        out_h, out_w = (height + 1) // 2, (width + 1) // 2  # conv 3x3, stride 2, padding 1
        pooled_h, pooled_w = (out_h + 1) // 2, (out_w + 1) // 2
        # On CUDA the first block runs in one piece: strips exist for CPU caches and page faults.
        rows = out_h if self.strip_rows is None or x.is_cuda else min(self.strip_rows, out_h)
        if rows % 2 and rows != out_h:
            rows -= 1
        # Per-image input scaling folded into the weights: conv(W, x / s) == conv(W / s, x).
        # bf16 with ``first_block_fp32``: the first convolution runs in float32, its pooled map is
        # stored in bf16.
        dtype = torch.float32 if self.first_block_fp32 else self._dtype
        weights = (conv.weight.detach().float()[None] * inv_std.reshape(batch, 1, channels, 1, 1)).to(dtype)
        bias = conv.bias.detach().to(dtype)
        result = self._workspace((batch, conv.out_channels, pooled_h, pooled_w), self._dtype, x.device)
        sums = torch.zeros((batch, conv.out_channels), dtype=torch.float32, device=x.device)
        # Input strip buffers, reused from strip to strip: conv-output rows r read input rows
        # 2r-1 .. 2r+1 (row -1 and row H are the zero padding), so `rows` output rows need 2 rows + 1.
        # The centring runs in float32 (raw intensities do not fit bfloat16's 8-bit mantissa); bf16
        # converts the centred strip in a second, cache-resident pass.
        strip_shape = (1, channels, 2 * rows + 1, width)
        strip32 = torch.empty(strip_shape, dtype=torch.float32, device=x.device, memory_format=self._memory_format)
        strip = strip32 if dtype == torch.float32 else torch.empty(
            strip_shape, dtype=dtype, device=x.device, memory_format=self._memory_format)
        for n in range(batch):
            weight = weights[n].contiguous(memory_format=self._memory_format)
            for start in range(0, out_h, rows):
                stop = min(out_h, start + rows)
                top, bottom = 2 * start - 1, 2 * (stop - 1) + 1
                buffer32 = strip32[:, :, : bottom - top + 1]
                first, last = max(top, 0), min(bottom, height - 1)
                if top < 0:
                    buffer32[:, :, 0].zero_()
                if bottom >= height:
                    buffer32[:, :, -1].zero_()
                torch.sub(x[n : n + 1, :, first : last + 1], mean[n : n + 1],
                          out=buffer32[:, :, first - top : last - top + 1])
                buffer = buffer32 if strip is strip32 else strip[:, :, : bottom - top + 1].copy_(buffer32)
                pooled = self._pool_selu(F.conv2d(buffer, weight, bias, stride=2, padding=(0, 1)))
                result[n : n + 1, :, start // 2 : (stop + 1) // 2] = pooled
                sums[n] += pooled.sum(dim=(0, 2, 3), dtype=torch.float32)
        return result, sums / (pooled_h * pooled_w)

    def _blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(block 1, its global average [N, 32], block 2, block 3) of raw images [N, 4, H, W]."""
        weights = self._converted()
        x = x.float().contiguous()
        mean, std = image_moments(x)
        block1, average1 = self._block1(x, mean, 1.0 / (std + EPSILON))

        def conv(name: str, h: torch.Tensor, stride: int = 1) -> torch.Tensor:
            weight, bias = weights[name]
            return F.conv2d(h, weight, bias, stride=stride, padding=1)

        h = _selu_(conv("conv2", block1, stride=2), self.compile_selu)
        h = _selu_(conv("conv3", h), self.compile_selu)
        h = _selu_(conv("conv4", h), self.compile_selu)
        block2 = self._pool_selu(conv("conv5", h))
        h = _selu_(conv("conv6", block2), self.compile_selu)
        h = _selu_(conv("conv7", h), self.compile_selu)
        block3 = _selu_(conv("conv8", h), self.compile_selu)
        return block1, average1, block2, block3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 224 global-average features (float32) of raw images [N, 4, H, W]."""
        _, average1, block2, block3 = self._blocks(x)
        return torch.cat([average1, *(b.mean(dim=(2, 3), dtype=torch.float32) for b in (block2, block3))], dim=1)

    def block_maps(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The three block feature maps (channels-last) of raw images [N, 4, H, W] and their 224
        global averages, from the same single pass as ``features`` (the per-cell path,
        ``protloc.cells.features``, averages the maps over each cell). Block 1 is the per-thread
        workspace: valid until this thread's next call."""
        with torch.no_grad():
            block1, average1, block2, block3 = self._blocks(x)
            averages = torch.cat([average1, *(b.mean(dim=(2, 3), dtype=torch.float32) for b in (block2, block3))], dim=1)
        return (block1, block2, block3), averages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ProtlocError(
                f"gapnet-pl expects input [batch, {self.in_channels}, height, width], got {list(x.shape)}"
            )
        with torch.no_grad():
            features = self.features(x)
            return self.network.head(features.to(self.network.fc1.weight.dtype))


_LOCK = threading.Lock()
_CACHE_ATTRIBUTE = "_protloc_fast_paths"


# Options every new wrapper gets unless the caller passes its own (``use_compiled_selu``).
DEFAULT_OPTIONS: dict[str, object] = {}


def use_compiled_selu(enabled: bool = True) -> None:
    """Make new fast wrappers run SELU as one compiled kernel (see ``FastGapNetPL(compile_selu=)``).

    Worth it for runs of many images: the first call compiles for 1-5 s, later ones are 5-10% faster
    (the bf16 path reaches twice the authors' TensorFlow graph only with it; BENCHMARKS.md).
    """
    if enabled:
        DEFAULT_OPTIONS["compile_selu"] = True
    else:
        DEFAULT_OPTIONS.pop("compile_selu", None)


def fast_network(network: nn.Module, *, precision: str = "fp32", **options) -> nn.Module | None:
    """The fast wrapper of a GapNet-PL (``None`` for other networks), one per network and options.

    The wrapper takes raw images (it normalises them itself) and keeps converted weights between
    calls, so it is reused: repeated calls with the same network return the same object. It is kept
    in the network's ``__dict__`` (not as a submodule, so ``state_dict`` is unchanged) and goes away
    with the network.
    """
    _check_fast(precision)
    if not isinstance(network, GapNetPL):
        return None
    options = {**DEFAULT_OPTIONS, **options}
    key = (precision, tuple(sorted(options.items())))
    with _LOCK:
        wrappers = network.__dict__.get(_CACHE_ATTRIBUTE)
        if wrappers is None:
            wrappers = {}
            object.__setattr__(network, _CACHE_ATTRIBUTE, wrappers)
        fast = wrappers.get(key)
        if fast is None:
            fast = wrappers[key] = FastGapNetPL(network, precision=precision, **options)
        return fast


def gflop(height: int, width: int) -> float:
    """Multiply-adds x 2 of GapNet-PL's convolutions on one H x W image (7.85 GFLOP at 1024²)."""
    h1, w1 = math.ceil(height / 2), math.ceil(width / 2)
    p1h, p1w = math.ceil(h1 / 2), math.ceil(w1 / 2)
    h2, w2 = math.ceil(p1h / 2), math.ceil(p1w / 2)
    h3, w3 = math.ceil(h2 / 2), math.ceil(w2 / 2)
    macs = h1 * w1 * 32 * 4 * 9 + h2 * w2 * (64 * 32 + 3 * 64 * 64) * 9 + h3 * w3 * (128 * 64 + 2 * 128 * 128) * 9
    return 2 * macs / 1e9


def block_maps(network: nn.Module, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GapNet-PL's three block feature maps of a raw batch [N, 4, H, W], normalised as the predictor does.

    The same values as ``network.blocks(normalize(raw))`` (``protloc.inference.normalization``), from
    the fast path: the pass the image-level prediction makes, keeping the maps instead of only their
    averages (the localisation maps, and the per-cell path ``protloc.cells.features``). Block 1 is the
    per-thread workspace: use it before the next pass on this thread.
    """
    return maps_and_averages(network, raw)[0]


def maps_and_averages(network: nn.Module, raw: torch.Tensor, precision: str = "fp32", **options):
    """(the three block maps, their 224 global averages) of a raw batch; see ``block_maps``."""
    fast = fast_network(network, precision=precision, **options)
    if fast is None:
        raise ProtlocError(f"{getattr(network, 'name', 'this network')} has no block feature maps")
    return fast.block_maps(raw.float())
