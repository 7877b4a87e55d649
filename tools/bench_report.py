"""``bench.json`` / ``bench.csv`` / ``bench.png``, the printed table, and ``--compare`` merges.

``bench.json`` (schema 1) holds ``device``, ``environment``, ``config``, ``baseline``,
``baseline_note``, ``artifacts`` (label, path, kind, backend, dtype, scheme, size_bytes,
accuracy_level, ops, peak_host_mb, baseline) and ``results`` (one row per artifact and shape:
phase, batch, length, median/p90/p99/mean/min ms, throughput and its unit, speedup vs the
baseline). A merge (``--compare``) has the same ``results`` with a ``source`` column (the
device of each file) and a ``sources`` list instead of one environment.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from quantize.atomic import write_bytes
from quantize.errors import UserError

CSV_COLUMNS = ("source", "artifact", "baseline", "phase", "batch", "length", "shape", "median_ms", "p90_ms", "p99_ms",
               "mean_ms", "min_ms", "iterations", "throughput", "throughput_unit", "speedup", "size_mb", "peak_host_mb",
               "dtype", "scheme")


def _artifacts_by_label(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["label"]: a for a in report.get("artifacts", [])}


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per result, artifact facts joined in (merged reports keep their ``source``)."""
    arts = report.get("artifacts_by_source") or {None: _artifacts_by_label(report)}
    rows = []
    for r in report["results"]:
        source = r.get("source", report.get("device"))
        art = (arts.get(r.get("source")) or arts.get(None) or {}).get(r["artifact"], {})
        size = art.get("size_bytes")
        row = {**r, "source": source, "baseline": art.get("baseline"), "size_mb": round(size / 2**20, 2) if size else None,
               "peak_host_mb": art.get("peak_host_mb"), "dtype": art.get("dtype"), "scheme": art.get("scheme")}
        rows.append({k: row.get(k) for k in CSV_COLUMNS})
    return rows


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return buf.getvalue()


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per artifact and shape (and source, for merges)."""
    merged = "sources" in report
    head = ["source"] if merged else []
    head += ["artifact", "shape", "median ms", "p90 ms", "p99 ms", "throughput", "speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["source"]] if merged else []
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        cells += [r["artifact"], r["shape"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['throughput']:.1f} {r['throughput_unit']}", speed]
        lines.append("| " + " | ".join(cells) + " |")
    arts = report.get("artifacts") or [a for src in report.get("artifacts_by_source", {}).values() for a in src.values()]
    facts = []
    for a in arts:
        size = f"{a['size_bytes'] / 2**20:.1f} MiB" if a.get("size_bytes") else "?"
        peak = f", peak host {a['peak_host_mb']:.0f} MB" if a.get("peak_host_mb") else ""
        ops = a.get("ops") or {}
        fused = f", {ops['MatMulNBits']} MatMulNBits" if ops.get("MatMulNBits") else ""
        level = f", accuracy_level {a['accuracy_level']}" if a.get("accuracy_level") is not None else ""
        facts.append(f"{a['label']}: {a.get('dtype')} {a.get('scheme') or ''}, {size} on disk{peak}{fused}{level}")
    header = [f"device: {report['device']}"] if not merged else [f"sources: {', '.join(s['device'] for s in report['sources'])}"]
    if report.get("baseline_note"):
        header.append(report["baseline_note"])
    return "\n".join(header + lines + facts)


def plot(report: dict[str, Any], path: Path) -> None:
    """``bench.png``: median latency per shape (log scale, p90 whiskers, values on the bars) and the
    speedup of every non-baseline artifact vs the baseline, device and baseline in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    merged = "sources" in report
    series: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        series.setdefault(f"{r['source']} · {r['artifact']}" if merged else r["artifact"], []).append(r)
    shapes = list(dict.fromkeys(r["shape"] for r in report["results"]))
    speed = {k: v for k, v in series.items() if any(r.get("speedup") and r["speedup"] != 1.0 for r in v)}
    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(12 if speed else 7, 4.8), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: cycle[i % len(cycle)] for i, name in enumerate(series)}  # same colour in both panels
    lat = axes[0][0]
    _bars(lat, series, shapes, "median_ms", _ms, colors, whisker=True)
    positive = [r["median_ms"] for r in report["results"] if r["median_ms"] > 0]
    lat.set_yscale("log")
    lat.set_ylim(bottom=min(positive) / 3, top=max(r["p90_ms"] for r in report["results"]) * 3)
    lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Label the 2x and 5x minor ticks too: a narrow range may hold no power of ten at all.
    lat.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    _axis(lat, shapes, "median latency per run, ms (log scale; whisker: p90)")
    lat.legend(fontsize=8)
    if speed:
        ax = axes[0][1]
        _bars(ax, speed, shapes, "speedup", lambda v: f"{v:.2f}x", colors)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0, max(r["speedup"] for rows in speed.values() for r in rows if r.get("speedup")) * 1.2)
        _axis(ax, shapes, f"speedup vs {report.get('baseline') or 'baseline'} (x, higher is faster)")
        ax.legend(fontsize=8)
    title = report["device"] if not merged else " vs ".join(s["device"] for s in report["sources"])
    note = report.get("baseline_note") or ""
    fig.suptitle(f"Latency vs FP baseline — {title}" + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _bars(ax, series: dict[str, list[dict[str, Any]]], shapes: list[str], key: str, fmt: Callable[[float], str],
          colors: dict[str, str], whisker: bool = False) -> None:
    """Grouped bars of ``key`` per shape, one colour per series, each labelled with its value."""
    width = 0.8 / max(1, len(series))
    for i, (name, rows) in enumerate(series.items()):
        by_shape = {r["shape"]: r for r in rows}
        present = [j for j, s in enumerate(shapes) if s in by_shape and by_shape[s].get(key)]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in present]
        values = [by_shape[shapes[j]][key] for j in present]
        err = None
        if whisker:
            err = [[0] * len(present), [max(0.0, by_shape[shapes[j]]["p90_ms"] - by_shape[shapes[j]]["median_ms"])
                                        for j in present]]
        bars = ax.bar(xs, values, width, yerr=err, capsize=2, label=name, color=colors[name])
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7, padding=2)


def _axis(ax, shapes: list[str], ylabel: str) -> None:
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def write_outputs(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.csv`` and ``bench.png`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "csv": out / "bench.csv", "png": out / "bench.png"}
    plot(report, paths["png"])
    write_bytes(paths["csv"], to_csv(report).encode())
    write_bytes(paths["json"], (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return paths


def read_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist (expected a bench.json written by python -m tools bench)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("tool") != "bench" or not isinstance(data.get("results"), list):
        raise UserError(f"{p} is not a bench.json (no tool: bench / results)")
    return data


def merge(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Side-by-side merge of several ``bench.json`` (e.g. one per GPU); sources named by device."""
    if len(paths) < 2:
        raise UserError("--compare needs at least two bench.json files")
    reports = [read_report(p) for p in paths]
    names: list[str] = []
    for report in reports:
        name, n = report["device"], 2
        while name in names:
            name, n = f"{report['device']} #{n}", n + 1
        names.append(name)
    results = [dict(r, source=name) for name, rep in zip(names, reports) for r in rep["results"]]
    return {"schema_version": 1, "tool": "bench-compare", "device": " | ".join(names),
            "sources": [{"file": str(p), "device": n, "environment": rep.get("environment"), "baseline": rep.get("baseline"),
                         "baseline_note": rep.get("baseline_note")} for p, n, rep in zip(paths, names, reports)],
            "artifacts_by_source": {n: _artifacts_by_label(rep) for n, rep in zip(names, reports)},
            "baseline": " / ".join(sorted({str(rep.get("baseline")) for rep in reports})),
            "results": results}
