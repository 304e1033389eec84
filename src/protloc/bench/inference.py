"""The inference section: GapNet-PL on one image, as patches and whole, fp32 and bf16, each lever of
``protloc.inference.gapnet_pl_fast`` switched off in turn, against the plain eager forward."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from protloc.bench.common import (Progress, Settings, benchmark_image, interleaved, load_network,
                                  relative_difference, to_patches)


def inference_section(settings: Settings, progress: Progress) -> dict:
    import torch

    from protloc.inference.gapnet_pl_fast import FastGapNetPL, gflop
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
    int8 = _int8_row(network, settings)
    if int8 is not None:
        rows.append(("int8, ONNX Runtime (outside the accuracy margins: not in auto)", "whole", int8, image,
                     "static int8, calibrated on synthetic fields (protloc.inference.int8)"))
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


def _int8_row(network, settings: Settings):
    """GapNet-PL's int8 graph (quantised once, cached in the user cache), or None (quick runs; no
    onnxruntime)."""
    if settings.quick:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM
    from protloc.inference.int8 import int8_forward

    return int8_forward(network, None, HPA_CONFOCAL_PIXEL_SIZE_UM)


def bf16_class_check(network, settings: Settings) -> dict:
    """Predicted classes of fp32 and bf16 (whole image) on synthetic samples (the demo's generator)."""
    import torch

    from protloc.data.synth import draw_sample
    from protloc.inference.gapnet_pl_fast import fast_network

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
