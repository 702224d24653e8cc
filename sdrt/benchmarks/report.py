"""The report folder: report.json (every figure), report.md (tables to read), PNG plots (stage latency by backend;
the reference image beside each backend's and an amplified difference map). Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path, write_json, write_text
from . import metrics
from .bench import REFERENCE
from .kernels import describe_mix

STAGE_COLOURS = {"text_encoder": "#4c72b0", "unet": "#dd8452", "vae_decoder": "#55a868", "overhead": "#8c8c8c"}
DIFF_GAIN = 10


def _ms(seconds: float) -> str:
    if seconds != seconds:  # NaN: a stage a peer does not expose
        return "—"
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _range(t: dict) -> str:
    return f"{_ms(t['median'])} ({_ms(t['min'])}–{_ms(t['max'])})"


def _slug(model: str, c: dict) -> str:
    return f"{Path(model).name}-{c['height']}x{c['width']}-b{c['batch']}"


def markdown(report: dict) -> str:
    m, o, p = report["machine"], report["options"], report["peak"]
    lines = [
        "# sdrt benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
        f"flags {' '.join(m['cpu_flags']) or 'unknown'}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Each figure is the median of {o['repeats']} runs (min–max in brackets) after {o['warmup']} warm-up run(s), "
        + ("backends loaded and run one after the other (a model two cannot hold at once); " if o.get("one_at_a_time")
           else "backends interleaved; ") + f"{o['steps']} steps of {o['sampler']}, guidance {o['guidance']}, prompt "
        f"\"{o['prompt']}\". Speed-ups are against `{REFERENCE}` (diffusers, fp32, CPU) in the same run. "
        f"Machine GEMM peak, the best any installed library reaches over 1024–4096² matrices: fp32 "
        f"{p['peak_fp32'] / 1e9:,.0f} GFLOP/s ({p['peak_fp32_from']})"
        + (f", bf16 {p['peak_bf16'] / 1e9:,.0f} GFLOP/s ({p['peak_bf16_from']})" if "peak_bf16" in p else "")
        + (f", int8 {p['peak_int8'] / 1e9:,.0f} GOP/s ({p['peak_int8_from']})" if "peak_int8" in p else "")
        + "; each backend's fraction is of the peak of the precision it computes in (`:w8a8`, int8 convolutions "
        "beside bf16 products: of the bf16 peak)." + _peak_kernels(p),
    ]
    for entry in report["models"]:
        e = entry["export"]
        made = f"exported in {e['export_seconds']:.1f} s" if e["export_seconds"] is not None else "export reused"
        lines += ["", f"## {entry['model']} ({entry['family']}, {entry['precision']} graphs; {made}, "
                      f"{e['size_bytes'] / 2**20:,.1f} MiB on disk)"]
        for c in entry["configs"]:
            fl = c["flops_per_unet_step"]
            lines += [
                "",
                f"### {c['height']}×{c['width']}, batch {c['batch']} (U-Net batch {c['unet_batch']}: "
                f"{fl['total'] / 1e9:,.1f} GFLOP per step — convolutions {fl['conv'] / 1e9:,.1f}, linear "
                f"{fl['linear'] / 1e9:,.1f}, attention {fl['attention'] / 1e9:,.1f})",
                "",
                "| backend | device | end to end | U-Net step | text encoder | VAE decode | overhead/step | images/s "
                "| speed-up (total / U-Net) | U-Net GFLOP/s | of peak | time to first image | peak memory |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for name, b in c["backends"].items():
                t = b["timings"]
                first = b.get("first_image", {})
                ttfi = _ms(first["time_to_first_image_s"]) if "time_to_first_image_s" in first else first.get("error", "—")
                mem = f"{first['peak_rss_mib']:,.0f} MiB" if "peak_rss_mib" in first else "—"
                speed = (f"{b['speedup_total']:.2f}× / {b['speedup_unet_step']:.2f}×" if "speedup_total" in b else "—")
                lines.append(
                    f"| {name}{' (peer)' if 'peer' in b else ''} | {b['device']} | {_range(t['total'])} | {_range(t['unet_step'])} | "
                    f"{_ms(t['text_encoder']['median'])} | {_ms(t['vae_decoder']['median'])} | "
                    f"{_ms(t['overhead_per_step']['median'])} | {b['images_per_second']:.2f} | {speed} | "
                    f"{b['unet_gflops_per_second']:,.0f} | {b['unet_peak_fraction']:.0%} | {ttfi} | {mem} |"
                )
            for name, why in c.get("not_run", {}).items():
                lines.append(f"| {name} | not run: {why} |" + " |" * 11)
            kernels = {n: b["unet_kernels"] for n, b in c["backends"].items() if "unet_kernels" in b}
            if kernels:
                lines += ["", "U-Net matrix kernels (OpenVINO's runtime graph: convolutions, linear layers, attention):"]
                lines += [f"- {name}: {describe_mix(mix)}" for name, mix in kernels.items()]
            parity = {n: b["parity"] for n, b in c["backends"].items() if b.get("parity")}
            if parity:
                lines += ["", "| backend | final latents rel. error | PSNR | SSIM | max pixel diff | held to | result |",
                          "|---|---|---|---|---|---|---|"]
                for name, q in parity.items():
                    tol = q["tolerance"]
                    lines.append(
                        f"| {name} | {_sci(q['latents_rel_error'])} | {q['psnr_db']:.1f} dB | {q['ssim']:.4f} | "
                        f"{q['max_abs_pixel_diff']} | ≤ {tol['latents_rel_error']:g}, ≥ {tol['psnr_db']:g} dB | "
                        f"{'pass' if q['passed'] else 'FAIL'} |"
                    )
            slug = _slug(entry["model"], c)
            lines += ["", f"![stage latency]({slug}-latency.png)", f"![images]({slug}-images.png)"]
    lines += _peers_summary(report)
    if "quality" in report:
        q = report["quality"]
        lines += ["", "## Quality on real images: the `shapes` model",
                  "", f"The nine check prompts of `sdrt.shapes` ({q['steps']} steps of {q['sampler']}, guidance "
                  f"{q['guidance']}, seeds {q['seeds'][0]}–{q['seeds'][-1]}), read back by `sdrt.shapes.read`; lower "
                  "precisions (fp16 graphs, bf16 compute) compared with the first sdrt backend's fp32 images (worst image).",
                  "", "| backend | graphs | prompts right | PSNR vs fp32 | SSIM vs fp32 | misread |",
                  "|---|---|---|---|---|---|"]
        for r in q["rows"]:
            wrong = "; ".join(f"{' '.join(w['expected'])} → {' '.join(x or '?' for x in w['read'])}" for w in r["wrong"])
            psnr = f"{r['psnr_db_vs_fp32']:.1f} dB" if "psnr_db_vs_fp32" in r else "—"
            ssim = f"{r['ssim_vs_fp32']:.4f}" if "ssim_vs_fp32" in r else "—"
            lines.append(f"| {r['backend']} | {r['precision']} | {r['adherence']}/{r['of']} | {psnr} | {ssim} | {wrong or '—'} |")
    lines += ["", "Overhead is the time outside the component calls (the sampler loop, tokenizing, image conversion); "
              "for `torch` it is diffusers' own. Time to first image counts imports, loading and one run in a fresh "
              "process; peak memory is that process's peak resident set (host memory only)."]
    return "\n".join(lines) + "\n"


def _peak_kernels(peak: dict) -> str:
    mixes = {p: peak[f"kernels_{p}"] for p in ("fp32", "bf16", "int8") if f"kernels_{p}" in peak}
    if not mixes:
        return ""
    return " OpenVINO ran the peak's products on " + "; ".join(f"{p}: {describe_mix(m)}" for p, m in mixes.items()) + "."


def _peers_summary(report: dict) -> list[str]:
    if "summary" not in report:  # a run without peers
        return []
    summary = report["summary"]["vs_best_peer"]
    if not summary:
        return ["", "## Against the peers", "", "No peer ran beside an sdrt backend of its precision class."]
    peers = {n: b["peer"] for m in report["models"] for c in m["configs"] for n, b in c["backends"].items()
             if "peer" in b}
    lines = ["", "## Against the peers", "",
             "Peers: " + "; ".join(f"`{n}`: {about}" for n, about in peers.items()) + ". Each runs in its own process "
             "and environment, on the same weights (converted with its own tool), interleaved with sdrt's backends; "
             "the reference ran alone before them. Time to first image and peak memory are the peer's worker process's. "
             "Ratios are the fastest peer's time over sdrt's fastest configuration's, in the same precision class "
             f"(target ≥ {summary['target']:g}×).",
             "", "| size | sdrt | fastest peer | precision | U-Net step | end to end |", "|---|---|---|---|---|---|"]
    for c in summary["by_config"]:
        lines.append(f"| {c['height']}×{c['width']}, batch {c['batch']} | {c['sdrt']} | {c['peer']} | "
                     f"{c['precision_class']} | {c['unet_step']:.2f}× | {c['end_to_end']:.2f}× |")
    verdict = "met" if summary["met"] else "not met"
    lines += ["", f"Worst size: U-Net step {summary['unet_step']:.2f}×, end to end {summary['end_to_end']:.2f}× — "
                  f"target {verdict}." + (f" Not run: {', '.join(summary['peers_not_run'])} (see the rows above)."
                                           if summary["peers_not_run"] else "")]
    return lines


def latency_plot(config: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(config["backends"])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(names)))
    left = np.zeros(len(names))
    for stage, colour in STAGE_COLOURS.items():
        values = np.array([max(config["backends"][n]["timings"][stage]["median"], 0.0) for n in names])
        ax.barh(names, values, left=left, color=colour, label=stage.replace("_", " "))
        left += values
    ax.set_xlabel("seconds (median)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def image_panel(images: dict[str, np.ndarray], path: Path) -> None:
    """The reference, each backend's image, and each one's difference from the reference ×DIFF_GAIN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = images.get(REFERENCE)
    others = [n for n in images if n != REFERENCE]
    columns = [(f"{REFERENCE} (reference)", ref)] if ref is not None else []
    for name in others:
        columns.append((name, images[name]))
        if ref is not None:
            columns.append((f"|{name} − {REFERENCE}| ×{DIFF_GAIN}", metrics.difference_map(images[name], ref, DIFF_GAIN)))
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 2.9), squeeze=False)
    for ax, (label, image) in zip(axes[0], columns):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(report: dict, images: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    for entry in report["models"]:
        for c in entry["configs"]:
            slug = _slug(entry["model"], c)
            latency_plot(c, f"{entry['model']} {c['height']}×{c['width']} batch {c['batch']}", out / f"{slug}-latency.png")
            shots = images.get((entry["model"], c["height"], c["batch"]))
            if shots:
                image_panel(shots, out / f"{slug}-images.png")
    write_text(out / "report.md", markdown(report))
    return out / "report.md"
