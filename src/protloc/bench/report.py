"""The result tables in Markdown (what BENCHMARKS.md shows)."""

from __future__ import annotations


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
    if "onnxruntime" in sections:
        from protloc.bench.onnx_runtime import onnxruntime_markdown

        out += onnxruntime_markdown(sections["onnxruntime"])
    if "cells" in sections:
        from protloc.bench.cells import cells_markdown

        out += cells_markdown(sections["cells"])
    return "\n".join(out)
