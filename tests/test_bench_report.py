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


def test_tables_and_plots(results: Path, tmp_path: Path):
    plots = tmp_path / "plots"
    out = results / "REPORT.md"
    assert report.main(["--results", str(results), "--plots", str(plots), "--out", str(out),
                        "--readme", str(tmp_path / "absent.md")]) == 0
    md = out.read_text()

    for bench in ("throughput", "quality", "mystery_bench"):
        assert f"### {bench}" in md

    rows = _table_rows(md, "throughput")
    header = rows[0]
    assert header[0] == "hardware"
    for col in ("precision", "batch_size", "samples_per_s"):
        assert col in header
    body = rows[2:]
    assert len(body) == 5  # header + separator + 5 records
    assert sum("Fake Xeon 9999 (2 cores)" in r[0] for r in body) == 4
    assert sum(r[0] == "1x NVIDIA H100 80GB HBM3" for r in body) == 1
    i_bs, i_sps = header.index("batch_size"), header.index("samples_per_s")
    assert ["8", "17.25"] == [body[1][i_bs], body[1][i_sps]]
    assert body[4][i_sps] == "4,321.0"

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
    flops = common.measure_matmul_peak("cpu", "fp32", n=128, repeats=2, time_budget_s=2.0)
    assert 1e6 < flops < 1e14
    assert common.peak_rss_mb() > 10
