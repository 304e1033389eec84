"""The training-step and data-path sections."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from protloc.bench.common import Progress, Settings, interleaved


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


def data_section(settings: Settings, progress: Progress) -> dict:
    from protloc.data.index import open_dataset
    from protloc.data.patches import random_crop
    from protloc.data.synth.dataset import generate_dataset
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
