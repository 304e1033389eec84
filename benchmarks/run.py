"""protloc's benchmarks: each figure against a baseline measured in the same run, reported as a ratio.

Run with ``protloc bench`` (from a source checkout) or ``python benchmarks/run.py``; sections:

* ``inference``: GapNet-PL on a 2048² four-channel image, as four 1024² patches and as one whole
  image, fp32 and bf16, each lever of ``protloc.models.gapnet_pl_fast`` switched off in turn; baseline: the
  plain eager NCHW fp32 forward (``network(normalize(x))``) on the four patches. Outputs are
  compared with the baseline's (max logit difference, relative), and bf16's predicted classes with
  fp32's on synthetic samples. ``--tf-result`` adds the authors' TensorFlow graph
  (``tools/tf_benchmark.py``, run in a separate process and environment) to the same table.
* ``training``: one optimiser step (forward, loss, backward, SGD) per network on CPU-sized crops;
  baseline: eager NCHW fp32; against channels-last and bf16 autocast.
* ``data``: random training crops per second from the prepared memory-mapped cache against decoding
  the TIFF files for every crop.
* ``platform``: the web platform under concurrent requests (``protloc serve`` in its own process on loopback):
  latency and throughput; baseline: one request at a time.
* ``scaling``: whole-image inference time and peak memory from 1024² to 4096², training step time and
  peak memory by batch size, each point in its own subprocess (peak RSS from ``ru_maxrss``).

Timings interleave the variants round-robin (each round runs every variant once), so a load change
on a shared machine hits all of them alike; the table reports the best round and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as platform_module
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

SECTIONS = ("inference", "training", "data", "platform", "scaling")
CHECKPOINT_CHANNEL_ORDER = ["nucleus", "protein", "microtubules", "er"]


@dataclass
class Settings:
    quick: bool = False
    model: str | None = None  # protloc model file (GapNet-PL); None: pretrained if cached, else random weights
    tf_result: str | None = None
    repeats: int | None = None
    compile: bool = False
    progress: bool = True
    threads: int | None = None

    @property
    def image_size(self) -> int:
        return 256 if self.quick else 2048

    @property
    def rounds(self) -> int:
        return self.repeats or (2 if self.quick else 7)


@dataclass
class Progress:
    bar: object = None

    def step(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:60])
            self.bar.update(1)


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    cpu = platform_module.processor() or platform_module.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    from protloc.inference.precision import bf16_supported

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "isa": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx512_vnni", "avx2"))),
        "bf16_native": bf16_supported("cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform_module.python_version(),
        "torch": torch.__version__,
        "onednn": torch.backends.mkldnn.is_available(),
        "platform": platform_module.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                progress: Progress | None = None) -> dict[str, dict]:
    """Seconds per call of each variant: warm-up calls, then ``rounds`` rounds running each once."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if progress:
            progress.step(f"round of {len(variants)} variants")
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "rounds": len(t)} for name, t in times.items()}


def load_network(settings: Settings):
    """(GapNet-PL network in eval mode, description of its weights)."""
    import torch

    from protloc.checkpoint import build_network, read_model_file
    from protloc.models import create_model

    spec = settings.model
    if spec is None:
        try:
            from protloc.pretrained.fetch import resolve_pretrained

            spec = str(resolve_pretrained())
        except Exception:  # not imported on this machine: random weights time the same
            spec = None
    if spec is None:
        torch.manual_seed(0)
        return create_model("gapnet-pl").eval(), "random initialisation (no imported pretrained weights found)"
    from protloc.errors import ProtlocError

    path = Path(spec)
    if not path.is_file():
        raise ProtlocError(f"no model file {spec}")
    payload = read_model_file(path)
    if payload["model"] != "gapnet-pl":
        raise ProtlocError(f"{path.name} is a {payload['model']} model; the inference benchmark needs GapNet-PL")
    return build_network(payload).eval(), f"{path} ({payload.get('source', {}).get('repository', 'protloc model file')})"


def benchmark_image(size: int):
    """Raw float32 [1, 4, size, size] (canonical channels) and the same array as tools/tf_benchmark.py feeds TF."""
    import torch

    from protloc.data.channels import CHANNELS

    rng = np.random.default_rng(0)
    nhwc = (rng.random((1, size, size, 4), dtype=np.float32) ** 3 * 4000.0).astype(np.float32)
    order = [CHECKPOINT_CHANNEL_ORDER.index(channel) for channel in CHANNELS]
    return torch.from_numpy(np.ascontiguousarray(nhwc[0].transpose(2, 0, 1)[order]))[None]


def to_patches(image, patch: int):
    import torch

    size = image.shape[-1]
    if size < 2 * patch:
        return image
    tiles = [image[:, :, r : r + patch, c : c + patch] for r in (0, patch) for c in (0, patch)]
    return torch.cat(tiles).contiguous()


def relative_difference(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


# -------------------------------------------------------------------------------------------------
# inference
# -------------------------------------------------------------------------------------------------


def inference_section(settings: Settings, progress: Progress) -> dict:
    import torch

    from protloc.models.gapnet_pl_fast import FastGapNetPL, gflop
    from protloc.inference.normalization import normalize

    network, weights = load_network(settings)
    size = settings.image_size
    patch = size // 2
    image = benchmark_image(size)
    patches = to_patches(image, patch)

    def plain(x):
        return network(normalize(x))

    network_cl = None

    def channels_last(x):
        return network_cl(normalize(x).contiguous(memory_format=torch.channels_last))

    def autocast_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return network(normalize(x))

    import copy

    network_cl = copy.deepcopy(network).to(memory_format=torch.channels_last)
    fast = {
        "fp32": FastGapNetPL(network),
        "fp32 no strips": FastGapNetPL(network, strip_rows=None),
        "fp32 NCHW": FastGapNetPL(network, channels_last=False),
        "fp32 SELU before pool": FastGapNetPL(network, pool_first=False),
        "fp32 compiled SELU": FastGapNetPL(network, compile_selu=True),
        "bf16": FastGapNetPL(network, precision="bf16"),
        "bf16 no strips": FastGapNetPL(network, precision="bf16", strip_rows=None),
        "bf16 first block fp32": FastGapNetPL(network, precision="bf16", first_block_fp32=True),
        "bf16 compiled SELU": FastGapNetPL(network, precision="bf16", compile_selu=True),
    }
    rows = [  # (name, mode, function, input, lever description)
        ("eager NCHW fp32 (baseline)", "patches", plain, patches, "network(normalize(x)) on 4 patches, batch 4"),
        ("eager NCHW fp32", "whole", plain, image, "one pass, same forward"),
        ("eager channels-last fp32", "whole", channels_last, image, "model and input channels-last only"),
        ("eager bf16 autocast", "whole", autocast_bf16, image, "torch.autocast(cpu, bfloat16) around the plain forward"),
        ("fast fp32", "patches", fast["fp32"], patches, "fast path on the 4 patches"),
        ("fast fp32", "whole", fast["fp32"], image, "all fp32 levers"),
        ("fast fp32, no strips", "whole", fast["fp32 no strips"], image, "first block in one piece"),
        ("fast fp32, NCHW", "whole", fast["fp32 NCHW"], image, "contiguous (NCHW) activations"),
        ("fast fp32, SELU before pool", "whole", fast["fp32 SELU before pool"], image, "SELU on the full maps"),
        ("fast fp32 + compiled SELU", "patches", fast["fp32 compiled SELU"], patches, "SELU as one inductor kernel"),
        ("fast fp32 + compiled SELU", "whole", fast["fp32 compiled SELU"], image, "SELU as one inductor kernel"),
        ("fast bf16", "patches", fast["bf16"], patches, "bf16 fast path on the 4 patches"),
        ("fast bf16", "whole", fast["bf16"], image, "all levers, bfloat16"),
        ("fast bf16, no strips", "whole", fast["bf16 no strips"], image, "first block in one piece"),
        ("fast bf16, first conv in fp32", "whole", fast["bf16 first block fp32"], image,
         "the first convolution in float32 (half the error)"),
        ("fast bf16 + compiled SELU", "patches", fast["bf16 compiled SELU"], patches, "SELU as one inductor kernel"),
        ("fast bf16 + compiled SELU", "whole", fast["bf16 compiled SELU"], image, "SELU as one inductor kernel"),
    ]
    if settings.quick and not settings.compile:  # no inductor compilation in the quick run
        rows = [row for row in rows if "compiled" not in row[0]]
    compile_seconds = {}
    if settings.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        for label, module, precision in (("torch.compile fast fp32", FastGapNetPL(network, strip_rows=None), "fp32"),
                                          ("torch.compile fast bf16", FastGapNetPL(network, precision="bf16",
                                                                                   strip_rows=None), "bf16"),
                                          ("torch.compile eager channels-last fp32", None, "fp32")):
            function = torch.compile(module if module is not None else channels_last, dynamic=False)
            start = time.perf_counter()
            with torch.no_grad():
                function(image)
            compile_seconds[label] = time.perf_counter() - start
            rows.append((label, "whole", function, image, "inductor, freezing (weights pre-packed for oneDNN)"))
            progress.step(f"compiled {label}")

    variants = {f"{name} [{mode}]": (lambda f=fn, x=inp: f(x)) for name, mode, fn, inp, _ in rows}
    with torch.no_grad():
        outputs = {key: fn() for key, fn in variants.items()}
        timings = interleaved(variants, settings.rounds, progress=progress)
    baseline_key = "eager NCHW fp32 (baseline) [patches]"
    reference = {"patches": outputs[baseline_key], "whole": outputs["eager NCHW fp32 [whole]"]}
    base = timings[baseline_key]["best_s"]
    table = []
    for (name, mode, _, inp, lever), key in zip(rows, variants):
        t = timings[key]
        table.append({
            "variant": name, "mode": mode, "lever": lever, **{k: round(v, 4) for k, v in t.items() if k != "rounds"},
            "ratio_vs_baseline": round(base / t["best_s"], 2),
            "gflop_per_s": round(gflop(size, size) / t["best_s"], 1),
            "max_logit_diff_rel": float(f"{relative_difference(outputs[key], reference[mode]):.2e}"),
        })
        progress.step(name)
    result = {
        "image": f"{size}x{size}x4 float32 raw intensities (uniform^3 x 4000, seed 0, the input of tools/tf_benchmark.py)",
        "patches": f"4 x {patch}x{patch}, one batch" if size >= 2 * patch else "image too small for patches",
        "weights": weights,
        "gflop_per_image": round(gflop(size, size), 2),
        "baseline": baseline_key,
        "rounds": settings.rounds,
        "rows": table,
        "whole_vs_patches_logits_note": "whole-image logits differ from the patch mean by design; "
                                        "each row is compared with the eager row of its own mode",
    }
    if compile_seconds:
        result["compile_seconds"] = {k: round(v, 1) for k, v in compile_seconds.items()}
    result["bf16_classes"] = bf16_class_check(network, settings)
    if settings.tf_result:
        result["tensorflow"] = tensorflow_rows(settings.tf_result, base, outputs, size)
    return result


def bf16_class_check(network, settings: Settings) -> dict:
    """Predicted classes of fp32 and bf16 (whole image) on synthetic samples (the demo's generator)."""
    import torch

    from protloc.data.synth import draw_sample
    from protloc.models.gapnet_pl_fast import fast_network

    count, size = (3, 128) if settings.quick else (24, 512)
    fp32, bf16 = fast_network(network, precision="fp32"), fast_network(network, precision="bf16")
    argmax_changed = set_changed = 0
    max_prob_diff = 0.0
    for index in range(count):
        image = torch.from_numpy(draw_sample(seed=0, index=index, height=size, width=size)[1])[None]
        p32 = torch.sigmoid(fp32(image))[0]
        p16 = torch.sigmoid(bf16(image))[0]
        argmax_changed += int(p32.argmax() != p16.argmax())
        set_changed += int(not torch.equal(p32 >= 0.5, p16 >= 0.5))
        max_prob_diff = max(max_prob_diff, float((p32 - p16).abs().max()))
    return {"samples": count, "size": size, "generator": "protloc.data.synth.draw_sample(seed=0, index)",
            "argmax_changed": argmax_changed, "thresholded_set_changed_at_0.5": set_changed,
            "max_probability_diff": round(max_prob_diff, 5)}


def tensorflow_rows(path: str, base: float, outputs: dict, size: int) -> dict:
    import torch

    from protloc.errors import ProtlocError

    try:
        data = json.loads(Path(path).read_text())
        modes = data["modes"]
    except (OSError, ValueError, KeyError) as exc:
        raise ProtlocError(f"cannot read the TensorFlow result {path}: {exc}") from None
    rows = []
    for mode, figures in modes.items():
        ours = outputs.get("eager NCHW fp32 (baseline) [patches]" if mode == "patches" else "eager NCHW fp32 [whole]")
        probs = torch.sigmoid(ours.float())
        ours_probs = probs.mean(dim=0) if mode == "patches" else probs[0]
        same_input = size == 2048
        rows.append({
            "variant": "TensorFlow, authors' graph", "mode": mode,
            "best_s": round(figures["seconds_best"], 4), "median_s": round(figures["seconds_median"], 4),
            "ratio_vs_baseline": round(base / figures["seconds_best"], 2),
            "max_probability_diff_vs_torch": (round(float(np.abs(np.array(figures["probabilities"])
                                                                 - ours_probs.numpy()).max()), 7)
                                              if same_input else None),
        })
    return {"file": str(path), "tensorflow_version": data.get("tensorflow_version"),
            "started": data.get("started"), "finished": data.get("finished"), "rows": rows,
            "note": "measured by tools/tf_benchmark.py in a separate process (TensorFlow environment), "
                    "not interleaved with the rows above"}


# -------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------


def training_section(settings: Settings, progress: Progress) -> dict:
    import torch

    from protloc.models import create_model, list_models

    crop, batch = (128, 2) if settings.quick else (256, 4)
    names = list(list_models())
    if settings.quick:
        names = ["gapnet-pl", "conv-mil"]
    result_rows = []
    cases = [(name, crop, batch) for name in names]
    if not settings.quick:
        cases.append(("gapnet-pl", 1024, 2))  # the paper's crop size
    for name, size, batch_size in cases:
        torch.manual_seed(0)
        options = {"input_size": size} if name in ("m-cnn", "deeploc") else {}
        network = create_model(name, **options).train()
        x = torch.rand(batch_size, 4, size, size)
        y = (torch.rand(batch_size, network.num_classes) > 0.7).float()
        optimiser = torch.optim.SGD(network.parameters(), lr=1e-4)
        network_cl = None

        def step(net, inp, autocast=False):
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outputs = net.forward_with_aux(inp)
                loss = net.loss(outputs, y)
            loss.backward()
            optimiser.step()

        import copy

        network_cl = copy.deepcopy(network).to(memory_format=torch.channels_last)
        optimiser_cl_params = None  # the channels-last copy trains its own parameters
        optimiser_cl = torch.optim.SGD(network_cl.parameters(), lr=1e-4)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def step_cl(autocast=False):
            optimiser_cl.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = network_cl.loss(network_cl.forward_with_aux(x_cl), y)
            loss.backward()
            optimiser_cl.step()

        del optimiser_cl_params
        variants = {
            "eager NCHW fp32 (baseline)": lambda: step(network, x),
            "channels-last fp32": lambda: step_cl(False),
            "bf16 autocast NCHW": lambda: step(network, x, True),
            "bf16 autocast channels-last": lambda: step_cl(True),
        }
        rounds = settings.repeats or (2 if settings.quick else 3)
        timings = interleaved(variants, rounds, progress=progress)
        base = timings["eager NCHW fp32 (baseline)"]["best_s"]
        for variant, t in timings.items():
            result_rows.append({
                "network": name, "crop": size, "batch": batch_size, "variant": variant,
                "best_s": round(t["best_s"], 4), "median_s": round(t["median_s"], 4),
                "samples_per_s": round(batch_size / t["best_s"], 2), "ratio_vs_baseline": round(base / t["best_s"], 2),
            })
        progress.step(f"training {name} {size}")
        del network, network_cl
    return {"step": "forward, loss, backward, SGD step (random data, train mode)", "rows": result_rows,
            "paper_reference": "605 s per epoch of 15,004 1024² crops on a GTX 1080 Ti = 24.8 samples/s"}


# -------------------------------------------------------------------------------------------------
# data path
# -------------------------------------------------------------------------------------------------


def data_section(settings: Settings, progress: Progress) -> dict:
    from protloc.data.index import open_dataset
    from protloc.data.patches import random_crop
    from protloc.data.synth import generate_dataset
    from protloc.training.cache import SampleCache

    samples, size, crop = (4, 256, 64) if settings.quick else (8, 2048, 1024)
    crops = 8 if settings.quick else 24
    with tempfile.TemporaryDirectory(prefix="protloc-bench-data-") as tmp:
        root = Path(tmp) / "synth"
        start = time.perf_counter()
        generate_dataset(root, samples, size, seed=0, workers=1, progress=False)
        generated = time.perf_counter() - start
        progress.step("synthetic TIFFs written")
        index = open_dataset(root)
        ids = index.ids()
        cache = SampleCache(index, Path(tmp) / "cache")
        start = time.perf_counter()
        cache.build(ids, progress=False)
        built = time.perf_counter() - start
        progress.step("cache built")
        rng = np.random.default_rng(0)

        def from_tiff():
            sample = ids[int(rng.integers(len(ids)))]
            return np.asarray(random_crop(index.load_image(sample), crop, rng), dtype=np.float32)

        def from_cache():
            sample = ids[int(rng.integers(len(ids)))]
            return np.array(random_crop(cache.open(sample), crop, rng), dtype=np.float32)

        def many(fn):
            return lambda: [fn() for _ in range(crops)]

        timings = interleaved({"decode TIFFs (baseline)": many(from_tiff), "prepared cache (memmap)": many(from_cache)},
                              settings.rounds, progress=progress)
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").glob("*.npy"))
        tiff_bytes = sum(p.stat().st_size for p in root.glob("*.tif"))
    base = timings["decode TIFFs (baseline)"]["best_s"]
    rows = [{"variant": name, "crops_per_s": round(crops / t["best_s"], 1),
             "median_crops_per_s": round(crops / t["median_s"], 1), "ratio_vs_baseline": round(base / t["best_s"], 2)}
            for name, t in timings.items()]
    return {"samples": samples, "image": f"{size}x{size}x4 uint16 TIFF (synthetic)", "crop": crop,
            "crops_per_round": crops, "rows": rows, "synth_seconds": round(generated, 1),
            "cache_build_seconds": round(built, 2), "cache_mib": round(cache_bytes / 2**20, 1),
            "tiff_mib": round(tiff_bytes / 2**20, 1), "note": "one process, page cache warm (files just written)"}


# -------------------------------------------------------------------------------------------------
# platform
# -------------------------------------------------------------------------------------------------


# A client polls its result this often (the upload page polls every 400 ms).
POLL_SECONDS = 0.05


def platform_section(settings: Settings, progress: Progress) -> dict:
    import socket
    import threading

    try:
        import httpx
    except ImportError as exc:
        return {"skipped": f"{exc.name} is not installed (pip install -e '.[dev]')"}
    import tifffile
    import torch

    from protloc.checkpoint import save_model_file
    from protloc.labels import HPA13
    from protloc.models import create_model

    size = 128 if settings.quick else 1024
    levels = (1, 2) if settings.quick else (1, 4, 8)
    per_level = 4 if settings.quick else 16
    with tempfile.TemporaryDirectory(prefix="protloc-bench-web-") as tmp:
        tmp = Path(tmp)
        if settings.model:
            model = settings.model
        else:
            torch.manual_seed(0)
            save_model_file(tmp / "model.pt", create_model("gapnet-pl"), model_name="gapnet-pl",
                            classes=list(HPA13.classes), label_set="hpa13", crop_size=1024)
            model = str(tmp / "model.pt")
        rng = np.random.default_rng(0)
        sample = (rng.random((size, size, 4)) * 4000).astype(np.uint16)
        tiff = tmp / "sample.tif"
        tifffile.imwrite(tiff, np.moveaxis(sample, -1, 0))
        payload = tiff.read_bytes()
        # The server runs as `protloc serve` in its own process, as a facility would run it: clients in
        # this process then do not share its interpreter lock with the web server and the worker.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "protloc", "serve", "--model", model, "--data-dir", str(tmp / "data"),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                return {"skipped": f"the server did not start: {(server.communicate()[1] or '').strip()[-300:]}"}
            time.sleep(0.1)
        rows = []
        try:
            with httpx.Client(base_url=url, timeout=600) as client:

                def one() -> float:
                    start = time.perf_counter()
                    response = client.post("/api/v1/predictions", files=[("files", ("sample.tif", payload))])
                    response.raise_for_status()
                    sid = response.json()["id"]
                    while True:
                        data = client.get(f"/api/v1/predictions/{sid}").json()
                        if data["status"] in ("done", "failed"):
                            if data["status"] == "failed":
                                raise RuntimeError(f"prediction failed: {data}")
                            return time.perf_counter() - start
                        time.sleep(POLL_SECONDS)

                one()  # warm-up: model loading, first forward
                for level in levels:
                    latencies: list[float] = []
                    lock = threading.Lock()

                    def worker(count: int) -> None:
                        for _ in range(count):
                            latency = one()
                            with lock:
                                latencies.append(latency)

                    start = time.perf_counter()
                    threads = [threading.Thread(target=worker, args=(per_level // level,)) for _ in range(level)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    wall = time.perf_counter() - start
                    rows.append({"concurrent_clients": level, "requests": len(latencies),
                                 "throughput_per_s": round(len(latencies) / wall, 2),
                                 "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
                                 "latency_p95_s": round(float(np.percentile(latencies, 95)), 3)})
                    progress.step(f"platform x{level}")
                stats = client.get("/api/v1/worker").json()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    base = rows[0]["throughput_per_s"]
    for row in rows:
        row["throughput_ratio_vs_one_client"] = round(row["throughput_per_s"] / base, 2)
    return {"sample": f"{size}x{size}x4 uint16 TIFF upload, covering patches of 1024", "rows": rows,
            "worker": stats, "latency": f"POST /api/v1/predictions until GET says done (polled every {POLL_SECONDS * 1000:.0f} ms); "
                       "server: `protloc serve` in its own process"}


# -------------------------------------------------------------------------------------------------
# scaling (subprocesses)
# -------------------------------------------------------------------------------------------------


def _status_mib(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(task: dict) -> dict:
    """One scaling point, in a fresh process: seconds per call and peak resident memory."""
    import torch

    from protloc.models.gapnet_pl_fast import FastGapNetPL
    from protloc.inference.normalization import normalize
    from protloc.models import create_model

    torch.manual_seed(0)
    rounds = task["rounds"]
    if task["kind"] == "inference":
        network = create_model("gapnet-pl").eval()
        x = benchmark_image(task["size"])
        if task["variant"] == "eager NCHW fp32":
            fn = lambda: network(normalize(x))  # noqa: E731
        else:
            fast = FastGapNetPL(network, precision="bf16" if "bf16" in task["variant"] else "fp32",
                                compile_selu="compiled" in task["variant"])
            fn = lambda: fast(x)  # noqa: E731
        before = _status_mib("VmRSS")
        reset = _reset_peak()
        with torch.no_grad():
            timing = interleaved({"x": fn}, rounds)["x"]
    else:
        network = create_model("gapnet-pl").train()
        size, batch = task["size"], task["batch"]
        x = torch.rand(batch, 4, size, size)
        y = (torch.rand(batch, 13) > 0.7).float()
        optimiser = torch.optim.SGD(network.parameters(), lr=1e-4)

        def fn():
            optimiser.zero_grad(set_to_none=True)
            network.loss(network.forward_with_aux(x), y).backward()
            optimiser.step()

        before = _status_mib("VmRSS")
        reset = _reset_peak()
        timing = interleaved({"x": fn}, rounds)["x"]
    # Peak resident memory while the measured calls ran (VmHWM after the reset), else of the process.
    peak = _status_mib("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    before = before if before is not None else float("nan")
    return {**task, "best_s": round(timing["best_s"], 4), "median_s": round(timing["median_s"], 4),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "peak_minus_before_mib": round(peak - before, 1),
            "peak_of": "the measured calls (VmHWM reset before them)" if reset else "the whole process (ru_maxrss)"}


def run_child(task: dict) -> dict:
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        return {**task, "error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def scaling_section(settings: Settings, progress: Progress) -> dict:
    sizes = (128, 256) if settings.quick else (1024, 2048, 3072, 4096)
    batches = (1, 2) if settings.quick else (1, 2, 4, 8)
    crop = 64 if settings.quick else 256
    rounds = 1 if settings.quick else 5
    inference_rows = []
    for size in sizes:
        variants = ("eager NCHW fp32", "fast fp32", "fast bf16") + (() if settings.quick else ("fast bf16 + compiled SELU",))
        for variant in variants:
            inference_rows.append(run_child({"kind": "inference", "size": size, "variant": variant, "rounds": rounds}))
            progress.step(f"scaling {variant} {size}")
    training_rows = []
    for batch in batches:
        training_rows.append(run_child({"kind": "training", "size": crop, "batch": batch, "rounds": rounds}))
        progress.step(f"scaling training batch {batch}")
    from protloc.models.gapnet_pl_fast import gflop

    for row in inference_rows:
        if "best_s" in row:
            row["gflop_per_s"] = round(gflop(row["size"], row["size"]) / row["best_s"], 1)
    for row in training_rows:
        if "best_s" in row:
            row["samples_per_s"] = round(row["batch"] / row["best_s"], 2)
    return {"inference": inference_rows, "training": training_rows,
            "memory": "peak resident set of a fresh process per point while the timed calls ran (Linux VmHWM, "
                      "reset after set-up), which includes the resident libraries, weights and input "
                      "(rss_before); random GapNet-PL weights (timing does not depend on them)",
            "training_crop": crop}


# -------------------------------------------------------------------------------------------------
# driver and report
# -------------------------------------------------------------------------------------------------

STEPS = {"inference": 40, "training": 30, "data": 12, "platform": 5, "scaling": 20}


def run(sections: list[str], settings: Settings) -> dict:
    import torch
    from tqdm.auto import tqdm

    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results: dict = {"protloc_bench": 1, "quick": settings.quick, "started": started, "machine": machine_info(),
                     "command": "protloc bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
                     "sections": {}}
    functions = {"inference": inference_section, "training": training_section, "data": data_section,
                 "platform": platform_section, "scaling": scaling_section}
    total = sum(STEPS[s] for s in sections)
    with tqdm(total=total, desc="bench", unit="step", disable=not settings.progress, file=sys.stderr) as bar:
        progress = Progress(bar)
        for section in sections:
            start = time.perf_counter()
            results["sections"][section] = functions[section](settings, progress)
            results["sections"][section]["seconds"] = round(time.perf_counter() - start, 1)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    return results


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The result tables in Markdown (what BENCHMARKS.md shows)."""
    m = results["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
           f"bf16 native: {m['bf16_native']}, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}; "
           f"load average at start {m['load_average_at_start'][0]:.2f}, at end {m.get('load_average_at_end', [0])[0]:.2f}; "
           f"{results['started']} to {results.get('finished')}.", ""]
    sections = results["sections"]
    if "inference" in sections:
        s = sections["inference"]
        out += [f"### Inference: GapNet-PL, {s['image']}", "",
                f"{s['gflop_per_image']} GFLOP per image; weights: {s['weights']}; best of {s['rounds']} interleaved "
                f"rounds; ratio = baseline best / row best (baseline: {s['baseline']}).", ""]
        rows = [[r["variant"], r["mode"], f"{r['best_s']:.3f}", f"{r['median_s']:.3f}", f"**{r['ratio_vs_baseline']}x**",
                 r["gflop_per_s"], r["max_logit_diff_rel"], r["lever"]] for r in s["rows"]]
        if "tensorflow" in s:
            for r in s["tensorflow"]["rows"]:
                rows.append([r["variant"], r["mode"], f"{r['best_s']:.3f}", f"{r['median_s']:.3f}",
                             f"**{r['ratio_vs_baseline']}x**", round(s["gflop_per_image"] / r["best_s"], 1),
                             f"prob. diff {r['max_probability_diff_vs_torch']}", "separate process, see note"])
        out += [_table(["variant", "mode", "best s", "median s", "ratio", "GFLOP/s", "max logit diff (rel.)", "lever"],
                       rows), ""]
        b = s["bf16_classes"]
        out += [f"bf16 vs fp32 on {b['samples']} synthetic {b['size']}² samples: argmax changed {b['argmax_changed']}, "
                f"thresholded set (0.5) changed {b['thresholded_set_changed_at_0.5']}, max probability difference "
                f"{b['max_probability_diff']}.", ""]
        if "compile_seconds" in s:
            out += ["torch.compile time (first call): " + ", ".join(f"{k} {v} s" for k, v in s["compile_seconds"].items()), ""]
    if "training" in sections:
        s = sections["training"]
        out += ["### Training step (CPU)", "", f"{s['step']}; paper: {s['paper_reference']}.", ""]
        out += [_table(["network", "crop", "batch", "variant", "best s", "samples/s", "ratio"],
                       [[r["network"], r["crop"], r["batch"], r["variant"], f"{r['best_s']:.3f}", r["samples_per_s"],
                         f"**{r['ratio_vs_baseline']}x**"] for r in s["rows"]]), ""]
    if "data" in sections:
        s = sections["data"]
        out += ["### Data path: random crops", "",
                f"{s['samples']} samples, {s['image']}, crops {s['crop']}²; cache {s['cache_mib']} MiB vs TIFF "
                f"{s['tiff_mib']} MiB, built in {s['cache_build_seconds']} s; {s['note']}.", ""]
        out += [_table(["variant", "crops/s (best)", "crops/s (median)", "ratio"],
                       [[r["variant"], r["crops_per_s"], r["median_crops_per_s"], f"**{r['ratio_vs_baseline']}x**"]
                        for r in s["rows"]]), ""]
    if "platform" in sections:
        s = sections["platform"]
        out += ["### Platform: concurrent prediction requests", ""]
        if "skipped" in s:
            out += [f"skipped: {s['skipped']}", ""]
        else:
            out += [f"{s['sample']}; latency: {s['latency']}.", ""]
            out += [_table(["clients", "requests", "throughput /s", "p50 latency s", "p95 latency s", "throughput ratio"],
                           [[r["concurrent_clients"], r["requests"], r["throughput_per_s"], r["latency_p50_s"],
                             r["latency_p95_s"], f"**{r['throughput_ratio_vs_one_client']}x**"] for r in s["rows"]]), ""]
    if "scaling" in sections:
        s = sections["scaling"]
        out += ["### Scaling", "", f"Whole-image inference ({s['memory']}).", ""]
        out += [_table(["size", "variant", "best s", "GFLOP/s", "peak RSS MiB", "peak - before MiB"],
                       [[f"{r['size']}²", r["variant"], r.get("best_s", r.get("error")), r.get("gflop_per_s"),
                         r.get("peak_rss_mib"), r.get("peak_minus_before_mib")] for r in s["inference"]]), ""]
        out += [f"GapNet-PL training step by batch size ({s['training_crop']}² crops, fp32 eager).", ""]
        out += [_table(["batch", "best s", "samples/s", "peak RSS MiB", "peak - before MiB"],
                       [[r["batch"], r.get("best_s", r.get("error")), r.get("samples_per_s"), r.get("peak_rss_mib"),
                         r.get("peak_minus_before_mib")] for r in s["training"]]), ""]
    return "\n".join(out)


def parse_sections(text: str) -> list[str]:
    from protloc.errors import ProtlocError

    sections = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ProtlocError(f"unknown section {unknown[0] if unknown else text!r}; choose from {', '.join(SECTIONS)}")
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="protloc benchmarks (see protloc bench --help)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from protloc.cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
