"""The result tables in Markdown (what BENCHMARKS.md shows)."""

from __future__ import annotations

from protloc.bench.common import markdown_table as _table


def markdown(results: dict) -> str:
    """The result tables in Markdown (what BENCHMARKS.md shows)."""
    m = results["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
           f"bf16 native: {m['bf16_native']}, instruction sets: {' '.join(m.get('isa') or []) or 'none listed'}, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}; "
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
        out += platform_markdown(sections["platform"])
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
    if "cluster" in sections:
        from protloc.bench.cluster import cluster_markdown

        out += cluster_markdown(sections["cluster"])
    if "cells-real" in sections:
        from protloc.bench.cells_real_report import section_markdown

        out += section_markdown(sections["cells-real"])
    return "\n".join(out)


def platform_markdown(s: dict) -> list[str]:
    if "precision_rows" in s:  # --precision: that precision against fp32 (protloc.bench.platform_precision)
        from protloc.bench.platform_precision import precision_markdown

        return precision_markdown(s)
    out = ["### Platform: probabilities first against today's path", ""]
    if "skipped" in s:
        return out + [f"skipped: {s['skipped']}", ""]
    out += [f"{s['method']}. Weights: {s['weights']}; load average at start {s['load_average_at_start']}.", ""]
    if s.get("image_probabilities"):
        out += ["Image probabilities: " + "; ".join(f"{name}: {how}" for name, how in s["image_probabilities"].items())
                + ".", ""]
    out += [f"One field ({s['field']}), best and median of the rounds; ratio = baseline best / row best.", ""]
    out += [_table(["variant", "to probabilities s (best / median)", "ratio", "page with pictures s (best / median)",
                    "ratio", "pictures"],
                   [[r["variant"], f"{r['probabilities_best_s']} / {r['probabilities_median_s']}",
                     f"**{r['probabilities_ratio']}x**",
                     f"{r['page_best_s']} / {r['page_median_s']}" if r["page_best_s"] else "",
                     f"**{r['page_ratio']}x**" if r["page_ratio"] else "", r["pictures_on_page"]] for r in s["field_rows"]]), ""]
    t = s["throughput"]
    out += [f"Uploads of a {t['sample']}, {t['requests_per_level']} per client count"
            + (f" ({t['baseline_requests_per_level']} for the baseline)." if "baseline_requests_per_level" in t else "."), ""]
    out += [_table(["variant", "clients", "requests/s", "p50 latency s", "ratio"],
                   [[r["variant"], r["clients"], r["per_s"], r["latency_p50_s"], f"**{r['ratio']}x**"] for r in t["rows"]]), ""]
    out += [f"{s['list']['concurrent']} concurrent `GET /api/v1/predictions` (50 items each), each on its own "
            "connection from a minimal asyncio HTTP client (client CPU per request in the last column).", ""]
    out += [_table(["variant", "p50 s", "p95 s", "max s", "p95 ratio", "client CPU ms/request"],
                   [[r["variant"], r["p50_s"], r["p95_s"], r["max_s"], f"**{r['p95_ratio']}x**",
                     r.get("client_cpu_ms_per_request", "")] for r in s["list"]["rows"]]), ""]
    m = s["memory"]
    out += [f"Server resident memory over {m['rounds']} rounds of {m['uploads_per_round']} uploads ({m['sample']}, "
            "4 clients), after one warm-up round (its settled size in the second column); settled = 2 s after "
            "the round's last submission and its pictures are done.", ""]
    out += [_table(["variant", "warm-up MiB", "settled MiB per round", "peak MiB per round", "growth first to last",
                    "spread"],
                   [[r["variant"], r.get("warm_up_settled_mib", ""), " / ".join(map(str, r["settled_mib"])),
                     " / ".join(map(str, r["peak_mib"])), f"{r['growth_first_to_last_pct']}%",
                     f"{r['spread_pct']}%" if "spread_pct" in r else ""] for r in m["rows"]]), ""]
    return out
