"""Turn bench/results/*.jsonl into Markdown tables and PNG plots.

    python bench/report.py [--results bench/results] [--readme bench/README.md]
                           [--plots bench/plots] [--out bench/results/REPORT.md]

* one Markdown table per bench name (= jsonl file stem) and hardware fingerprint (CPU model,
  cores and bf16 path, or GPU): figures from different machines never share a table; columns
  are picked from the records' own scalar fields, and every row names its hardware;
* plots (matplotlib, Agg) into bench/plots/:
  - ``<bench>_throughput.png``: samples/s vs batch size, one line per precision (x hardware),
    for records that have a batch size and a samples/s field;
  - ``<bench>_curve.png``: F1 vs step and vs wall time for records whose ``curve`` field has
    two points or more, labelled by the record's ``name``;
* writes the whole report to ``--out`` and, if ``--readme`` contains the markers
  ``<!-- report:start -->`` / ``<!-- report:end -->``, replaces the text between them.

Never crashes on an empty folder, unknown bench names or malformed lines (they are skipped
with a warning on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench.common import hardware_label as fingerprint_label  # noqa: E402

START, END = "<!-- report:start -->", "<!-- report:end -->"

# fields tried, in order, for the roles the plots need
BATCH_KEYS = ("batch_size", "per_device_batch_size", "bs", "global_batch_size")
THROUGHPUT_KEYS = (
    "samples_per_s", "samples_per_sec", "samples_per_second", "throughput_samples_per_s",
    "throughput", "examples_per_s",
)
PRECISION_KEYS = ("precision", "mixed_precision", "dtype", "amp")
CURVE_X_KEYS = ("step", "steps", "global_step")
CURVE_T_KEYS = ("time_s", "elapsed_s", "wall_s", "time", "seconds")
CURVE_Y_KEYS = ("f1", "eval_f1", "F1")

# columns shown first when present; everything else follows by how often it occurs
PREFERRED_COLUMNS = (
    "model", "task", "device", "precision", "mixed_precision", "dtype", "num_processes",
    "batch_size", "seq_len", "max_seq_length", "steps", "samples_per_s", "tokens_per_s",
    "step_time_ms", "mfu", "tflops", "peak_rss_mb", "peak_gpu_mem_mb", "exact_match", "f1",
    "final_f1", "time_s", "wall_s",
)
SKIP_COLUMNS = {"bench", "hardware", "curve", "timestamp_utc", "notes"}
# the columns that tell each known bench's story (nested fields as "outer.inner"); others get the
# generic pick
BENCH_COLUMNS = {
    "throughput": ("model", "precision", "batch_size", "seq_len", "padding", "attention_dropout",
                   "samples_per_s", "nonpad_tokens_per_s", "pad_fraction", "step_time_p50_s",
                   "step_time_p90_s", "peak_memory_mb", "achieved_flops_per_s",
                   "measured_matmul_peak_flops", "mfu_measured", "mfu_nominal"),
    "vs_tutorial": ("train_data", "max_train_steps", "batch_size",
                    "ratios.preprocess_examples_per_s", "ratios.train_samples_per_s",
                    "ratios.train_nonpad_tokens_per_s", "ratios.answers_labelled",
                    "tutorial.train_samples_per_s", "ours.train_samples_per_s",
                    "bf16.train_samples_per_s", "tutorial.f1", "ours.f1", "tutorial.start_f1",
                    "ours.start_f1", "tutorial.end_f1", "ours.end_f1"),
    "vs_trainer": ("max_train_steps", "batch_size", "peer_torch_compile",
                   "ratios.nonpad_tokens_per_s_fp32", "ratios.nonpad_tokens_per_s_bf16",
                   "speed.fp32.ours.train_nonpad_tokens_per_s",
                   "speed.fp32.theirs.train_nonpad_tokens_per_s",
                   "speed.bf16.ours.train_nonpad_tokens_per_s",
                   "speed.bf16.theirs.train_nonpad_tokens_per_s",
                   "end_to_end.ours.wall_seconds", "end_to_end.theirs.wall_seconds",
                   "end_to_end.ours.f1", "end_to_end.theirs.f1"),
    "decode": ("data", "features", "examples", "identical", "vectorized_s", "reference_s",
               "speedup", "speedup_all_cores", "exact_match", "f1"),
    "preprocess": ("data", "tutorial.examples_per_s", "ours.num_proc_1.examples_per_s",
                   "ours.num_proc_2.examples_per_s", "ours.warm.seconds", "cold_over_warm",
                   "ours.num_proc_2.peak_rss_mb", "cache_keys_equal",
                   "tutorial.answers_labelled_frac", "label_check.data.answers_labelled_frac",
                   "ratios.preprocess_examples_per_s"),
    "quality": ("name", "model", "mixed_precision", "global_step", "train_samples_per_s",
                "wall_seconds", "eval_questions", "exact_match", "f1", "start_f1", "end_f1",
                "HasAns_f1", "NoAns_f1"),
    "gpu_check": ("stage", "dry_run", "status", "ok", "precision", "batch_size", "padding",
                  "samples_per_s", "nonpad_tokens_per_s", "peak_memory_mb", "mfu_nominal",
                  "distribution.sharding", "loss_fell", "weights.max_abs_diff"),
}
MAX_COLUMNS = 14


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def load_results(results_dir: Path) -> dict[str, list[dict]]:
    """{bench name: [records]} from every ``*.jsonl`` in ``results_dir`` (sorted by name)."""
    out: dict[str, list[dict]] = {}
    if not results_dir.is_dir():
        return out
    for path in sorted(results_dir.glob("*.jsonl")):
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    print(f"warning: {path.name}:{lineno}: bad JSON ({e}); skipped",
                          file=sys.stderr)
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    print(f"warning: {path.name}:{lineno}: not an object; skipped", file=sys.stderr)
        if rows:
            out[path.stem] = rows
    return out


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _first(d: dict, keys: Iterable[str]) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _num(x: Any) -> Optional[float]:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def hardware_label(rec: dict) -> str:
    """The record's hardware (:func:`bench.common.hardware_label`), its device taken into
    account."""
    hw = rec.get("hardware") or {}
    if not isinstance(hw, dict):
        return str(hw)
    return fingerprint_label({**hw, "gpu_count": rec.get("num_gpus") or hw.get("gpu_count")},
                             rec.get("device"))


def hardware_groups(records: list[dict]) -> dict[str, list[dict]]:
    """Records by the hardware they ran on, in order of first appearance: figures from different
    machines never share a table."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(hardware_label(record), []).append(record)
    return groups


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e6 or a < 1e-3:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:,.1f}"
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v, separators=(",", ":"))
        return s if len(s) <= 40 else s[:37] + "..."
    s = str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def flatten(record: dict, prefix: str = "") -> dict:
    """Nested dicts -> dotted keys ("ratios.train_samples_per_s"); other values kept as they are."""
    flat: dict = {}
    for key, value in record.items():
        if isinstance(value, dict) and key != "hardware":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def choose_columns(records: list[dict], name: str | None = None) -> list[str]:
    counts: Counter[str] = Counter()
    for r in records:
        for k, v in flatten(r).items():
            if k.split(".")[0] not in SKIP_COLUMNS and _is_scalar(v) and v is not None:
                counts[k] += 1
    known = [c for c in BENCH_COLUMNS.get(name, ()) if c in counts]
    if known:  # a known bench: its story first, then other fields if there is room
        rest = sorted((c for c in counts if c not in known and "." not in c),
                      key=lambda c: (-counts[c], c))
        return known + rest[:max(0, MAX_COLUMNS - len(known))]
    cols = [c for c in PREFERRED_COLUMNS if c in counts]
    rest = sorted((c for c in counts if c not in cols and "." not in c),
                  key=lambda c: (-counts[c], c))
    cols += rest
    return cols[:MAX_COLUMNS]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "bench"


def markdown_table(records: list[dict], name: str | None = None) -> str:
    cols = choose_columns(records, name)
    header = ["hardware", *cols, "date (UTC)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for r in records:
        ts = str(r.get("timestamp_utc", ""))[:16].replace("T", " ")
        flat = flatten(r)
        cells = [_fmt(hardware_label(r)), *(_fmt(flat.get(c)) for c in cols), ts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(name: str, records: list[dict], plots_dir: Path) -> Optional[Path]:
    series: dict[str, dict[float, float]] = defaultdict(dict)
    for r in records:
        bs, sps = _num(_first(r, BATCH_KEYS)), _num(_first(r, THROUGHPUT_KEYS))
        if bs is None or sps is None:
            continue
        prec = _first(r, PRECISION_KEYS) or "default"
        variant = " ".join(str(r[k]) if k == "padding" else f"{k}={r[k]}"
                           for k in ("padding", "attention_dropout") if r.get(k) is not None)
        key = f"{prec} {variant} - {hardware_label(r)}".replace("  ", " ")
        series[key][bs] = max(sps, series[key].get(bs, 0.0))  # best run per point
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(series.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.set_title(f"{name}: throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plots_dir.mkdir(parents=True, exist_ok=True)
    path = plots_dir / f"{_slug(name)}_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve_points(curve: Any) -> list[tuple[Optional[float], Optional[float], float]]:
    """[(step, time, f1)] from a list of dicts or of [step, f1] / [step, time, f1] lists."""
    pts = []
    if not isinstance(curve, list):
        return pts
    for p in curve:
        if isinstance(p, dict):
            y = _num(_first(p, CURVE_Y_KEYS))
            if y is not None:
                pts.append((_num(_first(p, CURVE_X_KEYS)), _num(_first(p, CURVE_T_KEYS)), y))
        elif isinstance(p, (list, tuple)) and len(p) in (2, 3):
            vals = [_num(v) for v in p]
            if vals[-1] is not None:
                pts.append((vals[0], vals[1] if len(p) == 3 else None, vals[-1]))
    return pts


def plot_curves(name: str, records: list[dict], plots_dir: Path) -> Optional[Path]:
    curves = []
    for i, r in enumerate(records):
        pts = _curve_points(r.get("curve"))
        if len(pts) > 1:  # a single end point (a sweep run) is a table row, not a curve
            name_or_model = r.get("name") or r.get("run") or r.get("model")
            label = " ".join(str(x)[:70] for x in (name_or_model, _first(r, PRECISION_KEYS)) if x)
            label = f"{label or f'run {i}'} - {hardware_label(r)}"
            curves.append((label, pts))
    if not curves:
        return None
    has_step = any(s is not None for _, pts in curves for s, _, _ in pts)
    has_time = any(t is not None for _, pts in curves for _, t, _ in pts)
    axes_spec = [("step", 0)] * has_step + [("wall time (s)", 1)] * has_time
    if not axes_spec:
        return None
    plt = _plt()
    # one legend under the axes: with many runs, a legend inside an axis hides the curves
    legend_height = 0.2 * len(curves)  # inches, one row per run
    height = 4.2 + legend_height
    fig, axes = plt.subplots(1, len(axes_spec), squeeze=False,
                             figsize=(6 * len(axes_spec), height))
    for ax, (xlabel, idx) in zip(axes[0], axes_spec):
        for label, pts in curves:
            xy = sorted((p[idx], p[2]) for p in pts if p[idx] is not None)
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker=".", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("F1")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=1)
    fig.suptitle(f"{name}: F1 curve")
    fig.tight_layout(rect=(0, legend_height / height + 0.02, 1, 1))
    plots_dir.mkdir(parents=True, exist_ok=True)
    path = plots_dir / f"{_slug(name)}_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def build_report(
    results_dir: Path, plots_dir: Path, link_base: Optional[Path] = None
) -> tuple[str, list[Path]]:
    """Markdown text (tables + image links relative to ``link_base``) and the PNGs written."""
    link_base = link_base or results_dir
    data = load_results(results_dir)
    if not data:
        return f"_No benchmark results yet in `{results_dir.name}/`._\n", []
    parts, plots = [], []
    for name, records in data.items():
        parts.append(f"### {name}\n")
        parts.append(f"{len(records)} record(s) from `{name}.jsonl`.\n")
        for label, group in hardware_groups(records).items():
            parts.append(f"#### {name} on {label}\n")
            parts.append(markdown_table(group, name) + "\n")
        for fn in (plot_throughput, plot_curves):
            try:
                p = fn(name, records, plots_dir)
            except Exception as e:  # noqa: BLE001 - a bad plot must not lose the tables
                print(f"warning: {fn.__name__}({name}) failed: {e}", file=sys.stderr)
                p = None
            if p is not None:
                plots.append(p)
                parts.append(f"![{name} {p.stem.rsplit('_', 1)[-1]}]({_rel(p, link_base)})\n")
    return "\n".join(parts), plots


def replace_between_markers(text: str, body: str) -> Optional[str]:
    """Text with the part between the report markers replaced; None if markers are absent."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        return None
    return text[: i + len(START)] + "\n" + body.rstrip() + "\n" + text[j:]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    ap.add_argument("--plots", type=Path, default=None, help="default: <results>/../plots")
    ap.add_argument("--out", type=Path, default=None, help="default: <results>/REPORT.md")
    args = ap.parse_args(argv)

    results = args.results
    if not results.is_dir():  # a typo must not rewrite the README's tables as "no results"
        ap.error(f"--results {results}: no such folder")
    plots_dir = args.plots or results.parent / "plots"
    out = args.out or results / "REPORT.md"
    if out.is_dir():  # checked before any plot is drawn
        ap.error(f"--out {out}: is a folder; give the report's file path (e.g. "
                 f"{out / 'REPORT.md'})")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        ap.error(f"--out {out}: {parent} is a file, not a folder")

    body, plots = build_report(results, plots_dir, link_base=out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Benchmark report\n\n_Generated by `bench/report.py`; do not edit._\n\n"
                   + body, encoding="utf-8")
    readme_updated = False
    if args.readme and args.readme.is_file() and load_results(results):  # never empties it
        # links in the README are relative to the README's own folder
        readme_body, _ = build_report(results, plots_dir, link_base=args.readme.parent) if plots \
            else (body, [])
        text = args.readme.read_text(encoding="utf-8")
        new = replace_between_markers(text, readme_body)
        if new is not None and new != text:
            args.readme.write_text(new, encoding="utf-8")
            readme_updated = True
    print(json.dumps({
        "report": str(out), "plots": [str(p) for p in plots], "readme_updated": readme_updated,
        "benches": sorted(load_results(results)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
