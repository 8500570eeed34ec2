"""bench/report.py: fake records in a tmp folder -> Markdown tables, PNG plots, README section."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _load("report")
common = _load("common")

CPU_HW = {"cpu_model": "Fake Xeon 9999", "cpu_logical_cores": 2, "cpu_usable_cores": 2,
          "gpu_name": None, "gpu_count": 0}
GPU_HW = {"cpu_model": "Fake EPYC", "cpu_logical_cores": 16, "gpu_name": "NVIDIA H100 80GB HBM3",
          "gpu_count": 1}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    _write(res / "throughput.jsonl", [
        {"bench": "throughput", "timestamp_utc": "2026-01-02T03:04:05+00:00", "device": "cpu",
         "precision": prec, "batch_size": bs, "samples_per_s": sps, "hardware": CPU_HW}
        for prec, bs, sps in [("fp32", 4, 10.5), ("fp32", 8, 17.25), ("bf16", 4, 20.0),
                              ("bf16", 8, 33.0)]
    ] + [
        {"bench": "throughput", "timestamp_utc": "2026-01-02T04:00:00+00:00", "device": "cuda",
         "precision": "bf16", "batch_size": 64, "samples_per_s": 4321.0, "hardware": GPU_HW},
    ])
    _write(res / "quality.jsonl", [
        {"bench": "quality", "timestamp_utc": "2026-01-03T00:00:00+00:00", "model": "tiny-bert",
         "final_f1": 61.5, "exact_match": 50.0, "hardware": CPU_HW,
         "curve": [{"step": 0, "time_s": 0.0, "f1": 5.0}, {"step": 50, "time_s": 12.5, "f1": 40.0},
                   {"step": 100, "time_s": 25.0, "f1": 61.5}]},
    ])
    # unknown bench name with odd fields, plus a malformed line and a blank line
    _write(res / "mystery_bench.jsonl", [
        {"bench": "mystery_bench", "widgets": 3, "colour": "blue|green", "nested": {"a": 1}},
    ])
    with open(res / "mystery_bench.jsonl", "a") as f:
        f.write("{not json\n\n")
    return res


def _table_rows(md: str, bench: str) -> list[list[str]]:
    section = md.split(f"### {bench}\n", 1)[1].split("\n### ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


def _group_rows(md: str, heading: str) -> list[list[str]]:
    section = md.split(f"#### {heading}\n", 1)[1].split("\n#", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


def test_cpu_labels_name_the_bf16_path():
    assert common.hardware_label({"cpu_model": "AMD EPYC", "cpu_usable_cores": 2,
                                  "cpu_bf16": "AVX512-BF16"}) == \
        "AMD EPYC (2 cores), bf16 via AVX512-BF16"
    # records written before the path was recorded: this project's two CPU kinds, inferred
    assert common.hardware_label({"cpu_model": "AMD EPYC", "cpu_logical_cores": 2}).endswith(
        "bf16 via AVX512-BF16 (inferred)")
    assert common.hardware_fingerprint()["cpu_bf16"] in ("AMX", "AVX512-BF16",
                                                        "none (converted to fp32)", "unknown")


def test_tables_and_plots(results: Path, tmp_path: Path):
    plots = tmp_path / "plots"
    out = results / "REPORT.md"
    assert report.main(["--results", str(results), "--plots", str(plots), "--out", str(out),
                        "--readme", str(tmp_path / "absent.md")]) == 0
    md = out.read_text()

    for bench in ("throughput", "quality", "mystery_bench"):
        assert f"### {bench}" in md

    # one table per machine, each under a heading that names it (CPU: model, cores, bf16 path)
    cpu = _group_rows(md, "throughput on Fake Xeon 9999 (2 cores), bf16 via AMX (inferred)")
    gpu = _group_rows(md, "throughput on 1x NVIDIA H100 80GB HBM3")
    header = cpu[0]
    assert header[0] == "hardware" and gpu[0] == header
    for col in ("precision", "batch_size", "samples_per_s"):
        assert col in header
    assert len(cpu) == 2 + 4 and len(gpu) == 2 + 1  # header + separator + records
    assert all("Fake Xeon 9999 (2 cores)" in r[0] for r in cpu[2:])
    i_bs, i_sps = header.index("batch_size"), header.index("samples_per_s")
    assert ["8", "17.25"] == [cpu[3][i_bs], cpu[3][i_sps]]
    assert gpu[2][0] == "1x NVIDIA H100 80GB HBM3" and gpu[2][i_sps] == "4,321.0"

    q = _table_rows(md, "quality")
    assert "final_f1" in q[0] and "curve" not in q[0]
    assert q[2][q[0].index("final_f1")] == "61.5"

    m = _table_rows(md, "mystery_bench")
    assert "widgets" in m[0] and "colour" in m[0]
    assert len(m) == 3  # malformed line skipped, one good record
    assert "blue\\|green" in md  # pipe escaped, table not broken

    thr_png, curve_png = plots / "throughput_throughput.png", plots / "quality_curve.png"
    for png in (thr_png, curve_png):
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000
    assert not (plots / "mystery_bench_throughput.png").exists()
    assert not (plots / "throughput_curve.png").exists()
    assert "](../plots/throughput_throughput.png)" in md
    assert "](../plots/quality_curve.png)" in md


def test_readme_section_replaced(results: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("# Bench\n\nintro\n\n<!-- report:start -->\nOLD STUFF\n"
                      "<!-- report:end -->\n\ntail\n")
    report.main(["--results", str(results), "--plots", str(tmp_path / "plots"),
                 "--readme", str(readme)])
    text = readme.read_text()
    assert "OLD STUFF" not in text
    assert text.startswith("# Bench\n\nintro\n\n<!-- report:start -->\n")
    assert text.rstrip().endswith("<!-- report:end -->\n\ntail")
    inner = text.split("<!-- report:start -->")[1].split("<!-- report:end -->")[0]
    assert "### throughput" in inner and "### quality" in inner
    assert "](plots/throughput_throughput.png)" in inner  # relative to the README's folder
    # idempotent
    report.main(["--results", str(results), "--plots", str(tmp_path / "plots"),
                 "--readme", str(readme)])
    assert readme.read_text() == text


def test_readme_without_markers_untouched(results: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    report.main(["--results", str(results), "--plots", str(tmp_path / "plots"),
                 "--readme", str(readme)])
    assert readme.read_text() == "no markers here\n"


def test_empty_and_missing_results(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--results", str(empty), "--plots", str(tmp_path / "p"),
                        "--readme", str(tmp_path / "none.md")]) == 0
    assert "No benchmark results" in (empty / "REPORT.md").read_text()
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    body, plots = report.build_report(tmp_path / "does-not-exist", tmp_path / "p2")
    assert plots == [] and "No benchmark results" in body


def test_missing_or_empty_results_leave_the_readme_tables_alone(results: Path, tmp_path: Path,
                                                                 capsys):
    """``--results`` with a typo used to create the folder and replace every table of the
    README with "No benchmark results yet", rc 0."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:start -->\nRECORDED TABLES\n<!-- report:end -->\n")
    with pytest.raises(SystemExit) as stop:
        report.main(["--results", str(tmp_path / "resluts"), "--readme", str(readme)])
    assert stop.value.code == 2
    assert f"--results {tmp_path / 'resluts'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "resluts").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--results", str(empty), "--plots", str(tmp_path / "p"),
                        "--readme", str(readme)]) == 0
    assert json.loads(capsys.readouterr().out)["readme_updated"] is False
    assert "RECORDED TABLES" in readme.read_text()


def test_out_a_folder_or_below_a_file_is_one_line(results: Path, tmp_path: Path, capsys):
    """``--out`` naming a folder was an IsADirectoryError traceback (after the plots)."""
    for out, message in [(tmp_path, f"--out {tmp_path}: is a folder; give the report's file "
                                     f"path (e.g. {tmp_path / 'REPORT.md'})"),
                         (results / "throughput.jsonl" / "R.md",
                          f"--out {results / 'throughput.jsonl' / 'R.md'}: "
                          f"{results / 'throughput.jsonl'} is a file, not a folder")]:
        with pytest.raises(SystemExit) as stop:
            report.main(["--results", str(results), "--plots", str(tmp_path / "p"),
                         "--readme", "", "--out", str(out)])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")
    assert not (tmp_path / "p").exists()


def test_records_written_by_common_are_reported(tmp_path: Path):
    res = tmp_path / "results"
    path = common.append_record("roundtrip", {"batch_size": 2, "samples_per_s": 1.5,
                                              "precision": "fp32", "device": "cpu"}, res)
    assert path == res / "roundtrip.jsonl"
    rec = json.loads(path.read_text().splitlines()[-1])
    assert rec["bench"] == "roundtrip" and rec["timestamp_utc"].endswith("+00:00")
    for key in ("cpu_model", "cpu_logical_cores", "ram_total_gb", "torch", "transformers",
                "accelerate", "datasets", "python", "git_commit", "git_dirty", "host_hash"):
        assert key in rec["hardware"], key
    import socket

    assert socket.gethostname() not in json.dumps(rec)
    body, plots = report.build_report(res, tmp_path / "plots")
    rows = _table_rows(body, "roundtrip")
    assert rows[2][0] == report.hardware_label(rec) and "cores" in rows[2][0]
    assert [p.name for p in plots] == ["roundtrip_throughput.png"]


def test_nominal_peaks_and_helpers():
    assert common.nominal_peak_flops("NVIDIA H100 80GB HBM3", "bf16")[0] == pytest.approx(989.4e12)
    assert common.nominal_peak_flops("NVIDIA H100 80GB HBM3", "fp32")[0] == pytest.approx(66.9e12)
    assert common.nominal_peak_flops("NVIDIA H200", "tf32")[0] == pytest.approx(494.7e12)
    v, src = common.nominal_peak_flops("NVIDIA A100-SXM4-80GB", "torch.float16")
    assert v == pytest.approx(312e12) and "A100" in src
    assert common.nominal_peak_flops("cpu", "fp32") == (None, None)
    assert common.nominal_peak_flops("Intel(R) Xeon(R)", "bf16") == (None, None)
    assert common.peak_rss_mb() > 10


def test_the_peak_runs_the_model_layer_shapes_in_timed_windows():
    shapes = common.layer_matmul_shapes(tokens=64, hidden=32, intermediate=128)
    # four projections and the feed-forward pair, each forward + input and weight gradients
    assert len(shapes) == 18
    assert (64, 32, 128) in shapes and (64, 128, 32) in shapes and (32, 64, 128) in shapes
    peak = common.measure_peak(shapes, "cpu", "fp32", windows=3, window_s=0.05)
    assert len(peak["windows_flops_per_s"]) == 3
    assert peak["max"] == max(peak["windows_flops_per_s"]) and 1e6 < peak["max"] < 1e14
    assert min(peak["windows_flops_per_s"]) <= peak["median"] <= peak["max"]
    assert peak["spread"] == pytest.approx((peak["max"] - min(peak["windows_flops_per_s"]))
                                           / peak["median"])


def _peak(*rates):
    import statistics

    median = statistics.median(rates)
    return {"windows_flops_per_s": list(rates), "max": max(rates), "median": median,
            "spread": (max(rates) - min(rates)) / median}


def test_mfu_is_null_with_the_reason_when_the_peak_cannot_be_trusted():
    steady = _peak(100e9, 101e9, 102e9, 100e9, 101e9)
    assert common.measured_mfu(51e9, steady, steady) == (pytest.approx(0.5), None)
    # the EPYC records: 123-135 GFLOP/s achieved against a peak measured at 100
    mfu, reason = common.measured_mfu(130e9, steady, steady)
    assert mfu is None and "exceed the peak" in reason
    mfu, reason = common.measured_mfu(50e9, _peak(60e9, 100e9, 100e9, 100e9, 100e9), steady)
    assert mfu is None and "windows before the steps spread 40%" in reason
    mfu, reason = common.measured_mfu(50e9, steady, _peak(80e9, 80e9, 81e9, 80e9, 80e9))
    assert mfu is None and "before/after the steps differ" in reason
