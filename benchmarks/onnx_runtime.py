"""onnxruntime against protloc's fast fp32 path: GapNet-PL on one 2048² four-channel image.

Both run the same Predictor call, ``predict_proba(image, whole_image=True)``: protloc's model file
through its fast fp32 path (the baseline), and the ``protloc export --format onnx`` file of the same
weights through onnxruntime (``protloc predict --model model.onnx``), with the same number of threads.
The plain eager PyTorch forward runs beside them for scale. Variants run round-robin (warm-up, then
``rounds`` rounds), the table gives the best and median round; the ratio is the baseline's best time
over the variant's. Logits of each variant are compared with the eager forward's.

    python benchmarks/onnx_runtime.py [--model gapnet-pl.pt] [--size 2048] [--rounds 7] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def interleaved(variants: dict, rounds: int) -> dict:
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "rounds": len(t)} for name, t in times.items()}


def onnxruntime_section(model: str | None = None, size: int = 2048, rounds: int = 7, threads: int | None = None) -> dict:
    import onnxruntime
    import torch

    if threads:
        torch.set_num_threads(threads)  # onnxruntime's session takes the same number (OnnxNetwork)

    import protloc
    from protloc.checkpoint import save_model_file
    from protloc.export import export_model
    from protloc.inference import normalize
    from protloc.labels import HPA13
    from protloc.models import create_model

    with tempfile.TemporaryDirectory(prefix="protloc-bench-onnx-") as tmp:
        if model is None:  # random weights time the same as the published ones
            torch.manual_seed(0)
            model = str(Path(tmp) / "gapnet-pl.pt")
            save_model_file(model, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                            label_set="hpa13", crop_size=1024)
            weights = "random initialisation"
        else:
            weights = str(model)
        onnx_file = Path(tmp) / "gapnet-pl.onnx"
        export_checks = export_model(model, "onnx", onnx_file).checks
        fast = protloc.load_model(model)
        ort_predictor = protloc.load_model(onnx_file)
        rng = np.random.default_rng(0)
        image = (rng.random((4, size, size), dtype=np.float32) ** 3 * 4000.0).astype(np.float32)
        batch = torch.from_numpy(image)[None]
        with torch.no_grad():
            eager_logits = fast.network(normalize(batch)).numpy()
            ort_logits = ort_predictor.network(normalize(batch)).numpy()
        from protloc.models.gapnet_pl_fast import fast_network

        with torch.no_grad():
            fast_logits = fast_network(fast.network, precision="fp32")(batch).float().numpy()

        def eager():
            with torch.no_grad():
                return fast.network(normalize(batch))

        variants = {
            "protloc fast fp32 (baseline)": lambda: fast.predict_proba(image, whole_image=True, precision="fp32"),
            "onnxruntime fp32": lambda: ort_predictor.predict_proba(image, whole_image=True),
            "plain eager PyTorch fp32": eager,
        }
        timings = interleaved(variants, rounds)
    base = timings["protloc fast fp32 (baseline)"]["best_s"]
    scale = float(np.abs(eager_logits).max())
    differences = {"protloc fast fp32 (baseline)": float(np.abs(fast_logits - eager_logits).max()) / scale,
                   "onnxruntime fp32": float(np.abs(ort_logits - eager_logits).max()) / scale,
                   "plain eager PyTorch fp32": 0.0}
    rows = [{"variant": name, **t, "ratio_vs_fast": base / t["best_s"], "max_logit_diff_rel": differences[name]}
            for name, t in timings.items()]
    return {
        "section": "onnxruntime",
        "image": f"{size}x{size}x4 float32 (uniform^3 x 4000, seed 0), whole image",
        "weights": weights,
        "threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "export_checks": export_checks,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_1min": os.getloadavg()[0],
        "rows": rows,
    }


def machine() -> dict:
    import platform

    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "system": platform.platform()}


def markdown(result: dict) -> str:
    lines = [f"GapNet-PL, {result['image']}, {result['threads']} threads, onnxruntime {result['onnxruntime']}, "
             f"torch {result['torch']}; weights: {result['weights']}; 1-minute load average "
             f"{result['load_average_1min']:.1f} when it finished", "",
             "| variant | best s | median s | × protloc fast fp32 | max logit diff (rel. to eager) |",
             "| --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['best_s']:.3f} | {row['median_s']:.3f} | "
                     f"**{row['ratio_vs_fast']:.2f}x** | {row['max_logit_diff_rel']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GapNet-PL protloc model file (default: random weights)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: torch's choice)")
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    result = onnxruntime_section(args.model, args.size, args.rounds, args.threads)
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"tool": "benchmarks/onnx_runtime.py", "machine": machine(), "sections": {"onnxruntime": result}},
            indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
