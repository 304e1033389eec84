"""Section ``onnxruntime``: GapNet-PL exported to ONNX and run by onnxruntime, against protloc's fast
fp32 path, on one 2048² four-channel image (256² with ``--quick``).

Both sides make the same Predictor call, ``predict_proba(image, whole_image=True)``: the protloc model
file through its fast fp32 path (the baseline) and its ``protloc export --format onnx`` file through
onnxruntime (``protloc predict --model model.onnx``), with the same number of threads (``--threads``;
onnxruntime's session takes torch's count). The plain eager PyTorch forward runs beside them for
scale. Logits of each side are compared with the eager forward's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from protloc.bench.common import Progress, Settings, benchmark_image, interleaved

STEPS = 10


def _model_file(settings: Settings, folder: Path) -> tuple[str, str]:
    """(protloc model file to export, description of its weights)."""
    import torch

    from protloc.model_file import save_model_file
    from protloc.labels import HPA13
    from protloc.models import create_model

    if settings.model is not None:
        return settings.model, settings.model
    try:
        from protloc.pretrained.fetch import resolve_pretrained

        path = str(resolve_pretrained())
        return path, f"{path} (imported pretrained weights)"
    except Exception:  # not imported on this machine: random weights time the same
        torch.manual_seed(0)
        path = str(folder / "gapnet-pl.pt")
        save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                        label_set="hpa13", crop_size=1024)
        return path, "random initialisation (no imported pretrained weights found)"


def onnxruntime_section(settings: Settings, progress: Progress) -> dict:
    import onnxruntime
    import torch

    from protloc.errors import ProtlocError
    from protloc.export import export_model
    from protloc.inference.normalization import normalize
    from protloc.inference.predictor import load_model
    from protloc.inference.gapnet_pl_fast import fast_network

    with tempfile.TemporaryDirectory(prefix="protloc-bench-onnx-") as tmp:
        model, weights = _model_file(settings, Path(tmp))
        onnx_file = Path(tmp) / "gapnet-pl.onnx"
        export_checks = export_model(model, "onnx", onnx_file).checks
        progress.step("exported to ONNX")
        fast = load_model(model)
        if fast.model_name != "gapnet-pl":
            raise ProtlocError(f"the onnxruntime benchmark needs GapNet-PL, got {fast.model_name}")
        exported = load_model(onnx_file)
        batch = benchmark_image(settings.image_size)
        image = batch[0].numpy()
        with torch.no_grad():
            eager_logits = fast.network(normalize(batch)).numpy()
            ort_logits = exported.network(normalize(batch)).numpy()
            fast_logits = fast_network(fast.network, precision="fp32")(batch).float().numpy()

        def eager():
            with torch.no_grad():
                return fast.network(normalize(batch))

        variants = {
            "protloc fast fp32 (baseline)": lambda: fast.predict_proba(image, whole_image=True, precision="fp32"),
            "onnxruntime fp32": lambda: exported.predict_proba(image, whole_image=True),
            "plain eager PyTorch fp32": eager,
        }
        timings = interleaved(variants, settings.rounds, progress=progress)
    base = timings["protloc fast fp32 (baseline)"]["best_s"]
    scale = float(np.abs(eager_logits).max())
    differences = {"protloc fast fp32 (baseline)": float(np.abs(fast_logits - eager_logits).max()) / scale,
                   "onnxruntime fp32": float(np.abs(ort_logits - eager_logits).max()) / scale,
                   "plain eager PyTorch fp32": 0.0}
    rows = [{"variant": name, "best_s": round(t["best_s"], 4), "median_s": round(t["median_s"], 4),
             "rounds": t["rounds"], "ratio_vs_fast": round(base / t["best_s"], 3),
             "max_logit_diff_rel": differences[name]} for name, t in timings.items()]
    return {
        "image": f"{settings.image_size}x{settings.image_size}x4 float32 (uniform^3 x 4000, seed 0), whole image",
        "weights": weights,
        "threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "export_checks": export_checks,
        "rows": rows,
    }


def onnxruntime_markdown(s: dict) -> list[str]:
    lines = ["### onnxruntime against the fast path", "",
             f"GapNet-PL, {s['image']}, {s['threads']} thread(s) each, onnxruntime {s['onnxruntime']}; "
             f"weights: {s['weights']}. Export check: {s['export_checks'][-1]}.", "",
             "| variant | best s | median s | × protloc fast fp32 | max logit diff (rel. to eager) |",
             "|---|---|---|---|---|"]
    for row in s["rows"]:
        lines.append(f"| {row['variant']} | {row['best_s']:.3f} | {row['median_s']:.3f} | "
                     f"**{row['ratio_vs_fast']:.2f}x** | {row['max_logit_diff_rel']:.2e} |")
    return lines + [""]
