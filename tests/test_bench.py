"""The benchmark launcher runs its quick plans and reports ratios against its baselines."""

from __future__ import annotations

import pytest

from launchers import bench


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name, expected",
    [
        ("reshape", ["speed-up", "same clusters", "yes"]),
        ("shard", ["naive", "x naive", "jpeg2000", "Weak-labelled engine pool", "core-hours", "chosen ensemble"]),
        ("loader", ["webdataset", "LZ4 pixel bands", "lossless JPEG 2000"]),
        ("index", ["format 1: one JSON record per sample (baseline)", "memory-mapped columns", "same members"]),
        ("score", ["one at a time (images/s)", "score.py job (images/s)", "1 centre crop of 64, fp32"]),
    ],
)
def test_quick_benchmarks_report_ratios(name, expected, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert bench.main([name, "--quick", "--out", str(out)]) == 0
    report = out.read_text()
    assert all(word in report for word in expected)
    assert "NO" not in report.split("|")  # no dense/fast disagreement


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_million_scale_plan_runs_every_cpu_path_and_agrees(tmp_path):
    out = tmp_path / "scale.md"
    assert bench.main(["reshape", "--scale", "million", "--quick", "--out", str(out)]) == 0
    rows = _table_rows(out.read_text(), "8,000 x 64")
    assert len(rows) == 1
    row = rows[0]
    assert row[1] == "cpu" and row[8] == "yes"  # ours, today's exact path and FAISS found the same clusters
    assert float(row[4]) > 0 and "s / " in row[5] and "s / " in row[7]  # ours / floor, baseline, FAISS ran
    with pytest.raises(SystemExit):
        bench.main(["shard", "--scale", "million"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_only_million_plan_runs_the_accelerator_rows_against_their_floor_alone(tmp_path):
    from dist_syndr import runtime

    out = tmp_path / "gpu.md"
    assert bench.main(["reshape", "--scale", "million", "--gpu-only", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    rows = _table_rows(text, "3,000 x 64")
    assert len(rows) == 1 and rows[0][1] == ("gpu" if runtime.has_cuda() else "cpu (no GPU visible)")
    assert float(rows[0][4]) > 0 and rows[0][5] == "not run"  # ours / floor; no CPU baseline ran
    assert "GPU rows only" in text and "8,000 x 64" not in text
    with pytest.raises(SystemExit):
        bench.main(["reshape", "--gpu-only"])


@pytest.mark.timeout(30)
def test_mfu_uses_each_cards_own_peak_and_gpu_plans_are_picked_on_gpus_only():
    from dist_syndr import runtime
    from dist_syndr.bench.score import ScorePlan
    from dist_syndr.bench.train import peak_flops

    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("Tesla T4") is None
    assert ScorePlan.gpu().device == "cuda" and ScorePlan.gpu().model == "vit_base_patch16_224"
    assert ScorePlan.for_this_machine() == (ScorePlan.gpu() if runtime.has_cuda() else ScorePlan())


# ---------------------------------------------------------------------------
# bench.py train and the combined report of bench.py all


def _table_rows(section: str, first_cell: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith(f"| {first_cell}")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _ratio(cell: str) -> float:
    return float(cell.split("x")[0])


@pytest.fixture(scope="module")
def quick_all_report(tmp_path_factory) -> str:
    """``bench.py all --quick`` once for the tests below (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("bench-all") / "report.md"
    assert bench.main(["all", "--quick", "--out", str(out)]) == 0
    return out.read_text()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_train_benchmark_measures_ddp_deepspeed_and_trainer(quick_all_report):
    section = quick_all_report.split("## train", 1)[1]
    rows = _table_rows(section, "vit_tiny_patch16_224")
    assert [row[1][:3] for row in rows] == ["(a)", "(b)", "(b)", "(c)"]
    assert "DDP" in rows[0][1] and "DeepSpeed ZeRO-0" in rows[1][1] and "DeepSpeed ZeRO-1" in rows[2][1]
    assert "trainer (ZeRO-0)" in rows[3][1] and "train_epoch" in rows[3][1] and "DALI cpu" in rows[3][1]
    assert all(float(row[2]) > 0 for row in rows)  # images/s per process
    assert rows[0][5] == "1.00x (baseline)" and all(_ratio(row[5]) > 0 for row in rows[1:])
    assert rows[3][3].endswith("%") and rows[0][3] == "-"  # the trainer reports its data-wait share
    assert "2 ranks on gloo" in section and "GFLOP per image" in section


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_all_puts_one_summary_table_on_top(quick_all_report):
    assert quick_all_report.startswith("## Summary")
    summary = quick_all_report.split("\n## ", 1)[0]
    names = ("reshape", "shard", "loader", "index", "score", "train")
    rows = [row for name in names for row in _table_rows(summary, name)]
    assert {row[0] for row in rows} == set(names)
    assert len(rows) == len(_table_rows(summary, "")) - 1  # every row but the header belongs to a benchmark
    assert all(_ratio(row[5]) > 0 for row in rows)
    train_cases = [row[1] for row in rows if row[0] == "train"]
    assert train_cases == [
        "vit_tiny_patch16_224: bare DeepSpeed ZeRO-0 step",
        "vit_tiny_patch16_224: bare DeepSpeed ZeRO-1 step",
        "vit_tiny_patch16_224: trainer training phase (ZeRO-0, loader included)",
    ]
    positions = [quick_all_report.index(f"\n## {name}\n") for name in names]
    assert positions == sorted(positions)  # then each benchmark's own section, in order


@pytest.mark.timeout(30)
def test_reports_from_recorded_results():
    from dist_syndr.bench import harness, train

    recorded = {
        "model": "vit_large_patch16_224",
        "cases": {
            "ddp": {"images_per_second": 1000.0, "per_rank": [1000.0], "data_wait_share": None},
            "zero1": {"images_per_second": 960.0, "per_rank": [960.0], "data_wait_share": None},
            "zero2": {"images_per_second": 950.0, "per_rank": [950.0], "data_wait_share": None},
            "trainer": {"images_per_second": 900.0, "per_rank": [900.0], "data_wait_share": 0.02},
        },
        "flops_per_image": 4.0e11,
        "loader_images_per_second": 5000.0,
        "trainer_loop_images_per_second": 920.0,
        "steps_per_epoch": 6,
        "world_size": 1,
        "device": "cuda",
        "dist_backend": "nccl",
        "gpu_name": "NVIDIA H200",
        "loader": "DALI gpu",
        "threads": 16,
        "trainer_zero_stage": 2,
    }
    result = train.ModelResult.from_json(recorded)
    assert result.mfu("trainer") == pytest.approx(4.0e11 * 900.0 / train.H200_BF16_PEAK_FLOPS)
    report = train.build_report(train.TrainPlan.gpu(), {"vit_large_patch16_224": result, "resnet18": None})
    rows = _table_rows(report.markdown, "vit_large_patch16_224")
    assert [row[5] for row in rows] == ["1.00x (baseline)", "0.96x", "0.95x", "0.90x"]
    assert [row[4] for row in rows] == ["40.4%", "38.8%", "38.4%", "36.4%"] and rows[3][3] == "2.0%"
    assert "(c) full trainer (ZeRO-2)" in rows[3][1] and "ZeRO-2" in rows[2][1]
    assert _table_rows(report.markdown, "resnet18")[0][1].startswith("failed")
    assert [row.ratio for row in report.rows] == pytest.approx([0.96, 0.95, 0.90])
    assert "MFU 36.4%" in report.rows[2].ours

    cpu = train.ModelResult.from_json(recorded | {"device": "cpu", "gpu_name": ""})
    assert cpu.mfu("ddp") is None
    other = harness.Report("### other", (harness.SummaryRow("other", "case", "1 s", "naive", "-", None),))
    combined = bench.combined_report({"train": report, "other": other})
    summary = combined.split("\n## ", 1)[0]
    assert _table_rows(summary, "train")[0][5] == "0.96x" and _table_rows(summary, "other")[0][5] == "-"
    assert "\n## train\n\n### Training step" in combined and combined.rstrip().endswith("### other")


@pytest.mark.timeout(30)
def test_train_plan_rejects_bad_sizes():
    from dist_syndr.bench.train import TrainPlan

    with pytest.raises(ValueError, match="TrainPlan.crop"):
        TrainPlan(crop=128, image_side=96)
    with pytest.raises(ValueError, match="TrainPlan.num_photos"):
        TrainPlan(num_photos=8)
    assert TrainPlan.from_dict({"models": ["resnet18"], "types": [1, 2]}).types == (1, 2)
