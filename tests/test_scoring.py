"""Scoring images with a trained model: launchers/score.py, the Scorer API, exports and the MLflow model."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_syndr.evaluate.predict import predict
from dist_syndr.export import formats
from dist_syndr.features.passes import PassOptions
from dist_syndr.features.preprocess import normalise
from dist_syndr.scoring import inputs, output
from dist_syndr.scoring.crops import CropProtocol, tile_anchors
from dist_syndr.scoring.job import run_job
from dist_syndr.scoring.scorer import Scorer
from tests.conftest import PROJECT_ROOT, VENV_BIN, mlflow_tracking_at
from tests.test_evaluation import _data, _run_dir, _tiny_model, _tiny_shard_set, _write_images
from tests.test_imaging import phone_photos

BAD_FILES = {"empty.png": "empty file", "notes.jpg": "not a readable image", "truncated.png": "not a readable image"}


def _odd_images(folder: Path) -> dict[str, np.ndarray]:
    """Images in the modes a photo collection holds, written to ``folder``; name -> the RGB a scorer should see."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    expected = {}
    gray16 = (rng.integers(0, 65536, size=(40, 48))).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    expected["gray16.png"] = np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(rgb[:, :, 0]).save(folder / "gray.png")
    expected["gray.png"] = np.repeat(rgb[:, :, :1], 3, axis=2)
    rgba = np.dstack([rgb, np.full((40, 48), 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    expected["rgba.png"] = rgb
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(folder / "palette.png")
    expected["palette.png"] = np.asarray(palette.convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif, quality=95)
    expected["rotated.jpg"] = np.rot90(np.asarray(Image.open(folder / "rotated.jpg").convert("RGB")), k=-1)
    Image.fromarray(rgb[:20, :20]).save(folder / "small.png")
    expected["small.png"] = rgb[:20, :20]
    return expected


def _bad_files(folder: Path) -> None:
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good, format="PNG")
    (folder / "truncated.png").write_bytes(good.getvalue()[:60])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scoring")
    _run_dir(root, _tiny_model(3))
    _write_images(root / "photos")
    _odd_images(root / "photos")
    _bad_files(root / "photos")
    return root


def _rows(path: Path) -> dict[str, dict]:
    return {row["path"]: row for row in csv.DictReader(path.open())}


@pytest.mark.timeout(300)
def test_score_launcher_scores_a_mixed_folder_as_evaluate_predicts_and_resumes(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "score.py"), "--checkpoint", "runs/tiny"]
    command += ["--out", "scores.csv", "--crop-mode", "centre", "--workers", "1", "photos"]
    first = subprocess.run(command, cwd=tiny_run, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 3, first.stderr[-2000:]  # some inputs skipped
    rows = _rows(tiny_run / "scores.csv")
    assert len(rows) == 7 + 7 and all(row["crops"] == "1" for row in rows.values())
    assert rows["photos/small.png"]["resized"] == "True" and rows["photos/img00.png"]["resized"] == "False"
    errors = {row["path"]: row["reason"] for row in csv.DictReader((tiny_run / "scores.csv.errors.csv").open())}
    assert set(errors) == {f"photos/{name}" for name in BAD_FILES}
    assert all(errors[f"photos/{name}"].startswith(reason) for name, reason in BAD_FILES.items())
    assert "14 images scored (14 now, 0 by an earlier run) of 17 inputs; 3 skipped" in first.stdout
    # the same images as a shard set through evaluate's predict: the same scores for the same (centre) crops
    shard_set = _tiny_shard_set(tmp_path)
    predicted = predict(
        _tiny_model(3), shard_set, _data(eval_crop_mode="centre"), PassOptions(device="cpu", dali="off")
    )
    for key, value in zip(predicted.keys, predicted.predictions, strict=True):
        assert float(rows[f"photos/{key.split('/')[1]}.png"]["score"]) == pytest.approx(float(value), abs=1e-5)
    # a rerun scores nothing again (the bad files are retried and fail again)
    again = subprocess.run(command, cwd=tiny_run, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 3 and "14 images scored (0 now, 14 by an earlier run)" in again.stdout
    assert _rows(tiny_run / "scores.csv") == rows


@pytest.mark.timeout(300)
def test_a_killed_job_keeps_its_rows_and_a_rerun_scores_only_the_rest(tiny_run, tmp_path):
    out = tmp_path / "scores.jsonl"
    scorer = Scorer.load(tiny_run / "runs" / "tiny", "cpu", crop_mode="centre", batch_size=4)
    photos = sorted(str(p) for p in (tiny_run / "photos").glob("img*.png"))
    reference = run_job(lambda: scorer, photos, tmp_path / "reference.jsonl", num_workers=0, max_pixels=10**8)
    assert reference.num_rows == 7 and reference.num_failed == 0
    finished = [json.loads(line) for line in (tmp_path / "reference.jsonl").read_text().splitlines()]
    # what a kill leaves: the record of its model (written before any row), a part file with three complete rows
    # and one cut short
    output.meta_path(out).write_bytes(output.meta_path(tmp_path / "reference.jsonl").read_bytes())
    part = out.with_name(f"{out.name}.part-0")
    part.write_text("".join(json.dumps(row) + "\n" for row in finished[:3]) + '{"path": "cut')
    calls = []

    def counting_scorer() -> Scorer:
        calls.append(1)
        return scorer

    resumed = run_job(counting_scorer, photos, out, num_workers=0, max_pixels=10**8)
    assert (resumed.num_already_scored, resumed.num_scored, resumed.num_rows) == (3, 4, 7)
    merged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["path"] for row in merged] == photos and merged[:3] == finished[:3] and calls == [1]
    # batches of other sizes may round the last float32 bit differently
    assert [row["score"] for row in merged] == pytest.approx([row["score"] for row in finished], abs=1e-5)
    assert not part.exists() and output.finished_paths(out) == set(photos)


def test_the_python_scorer_takes_paths_pil_images_arrays_and_tensors(tiny_run):
    from dist_syndr import Scorer as PublicScorer

    scorer = PublicScorer.load(tiny_run / "runs" / "tiny", device="cpu", crop_mode="centre")
    path = tiny_run / "photos" / "img01.png"
    pixels = np.array(Image.open(path).convert("RGB"))
    items = [str(path), Image.open(path), pixels, torch.from_numpy(pixels).permute(2, 0, 1)]
    items.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    scores = scorer.score(items)
    assert scores.shape == (5,) and np.allclose(scores, scores[0], atol=1e-6)
    random = Scorer.load(tiny_run / "runs" / "tiny", device="cpu")  # the run's protocol: 3 random crops
    assert random.protocol == CropProtocol(32, 3, "random", 0)
    results = random.score_items([path, path])
    assert results[0].num_crops == 3 and results[0].spread > 0
    assert results[0].score == pytest.approx(results[1].score, abs=1e-6)  # same pixels, same crops
    with pytest.raises(ValueError, match="item 1 .* arrays must be uint8"):
        scorer.score([pixels, pixels.astype(np.float32)])


def test_decoding_handles_every_mode_orientation_and_limit(tiny_run):
    expected = _odd_images(tiny_run / "photos")
    for name, pixels in expected.items():
        np.testing.assert_array_equal(inputs.decode_file(tiny_run / "photos" / name), pixels, err_msg=name)
    with pytest.raises(inputs.ImageError, match="exceeds the limit of 100"):
        inputs.decode_file(tiny_run / "photos" / "img00.png", max_pixels=100)
    for name, reason in BAD_FILES.items():
        with pytest.raises(inputs.ImageError, match=reason):
            inputs.decode_file(tiny_run / "photos" / name)


def test_inputs_expand_folders_patterns_and_lists(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for path in ("a/x.jpg", "a/deep/y.png", "a/notes.txt", "b.png"):
        (tmp_path / path).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\nb.png\n\na/x.jpg\n")
    (tmp_path / "list.csv").write_text("id,path\n1,b.png\n2,a/deep/y.png\n")
    found = inputs.expand_paths(
        [tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "list.txt", tmp_path / "list.csv"]
    )
    assert found == [tmp_path / "a" / "deep" / "y.png", tmp_path / "a" / "x.jpg", tmp_path / "b.png"]
    with pytest.raises(ValueError, match="no such file, folder or pattern"):
        inputs.expand_paths([tmp_path / "missing"])
    with pytest.raises(ValueError, match="matches no image file"):
        inputs.expand_paths([str(tmp_path / "*.tif")])


@pytest.mark.parametrize("width, height", [(32, 32), (33, 40), (64, 100), (95, 32)])
def test_full_mode_tiles_cover_every_pixel_once_at_least(width, height):
    anchors = tile_anchors(width, height, 32)
    covered = np.zeros((height, width), dtype=int)
    for x, y in anchors:
        assert 0 <= x <= width - 32 and 0 <= y <= height - 32
        covered[y : y + 32, x : x + 32] += 1
    assert covered.min() >= 1 and len(anchors) == -(-width // 32) * -(-height // 32)


@pytest.mark.timeout(300)
def test_onnx_and_torchscript_exports_reproduce_pytorch_with_a_card(tiny_run):
    import onnxruntime

    scorer = Scorer.load(tiny_run / "runs" / "tiny", "cpu", crop_mode="full")
    crops, _ = scorer.protocol.model_inputs(inputs.decode_file(tiny_run / "photos" / "img02.png"))
    expected = scorer.forward(crops)
    onnx_check, onnx_card = formats.export_checkpoint(tiny_run / "runs" / "tiny", "onnx")
    session = onnxruntime.InferenceSession(str(onnx_check.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"crops": crops})[0], expected, atol=1e-4)
    script_check, _ = formats.export_checkpoint(tiny_run / "runs" / "tiny", "torchscript")
    with torch.no_grad():
        scripted = torch.jit.load(str(script_check.path))(torch.from_numpy(crops)).numpy()
    np.testing.assert_allclose(scripted, expected, atol=1e-4)
    weights_check, _ = formats.export_checkpoint(tiny_run / "runs" / "tiny", "safetensors")
    assert (
        weights_check.max_abs_difference == 0.0
        and Scorer.load(
            weights_check.path, "cpu", config_path=(tiny_run / "runs" / "tiny" / "config.yaml"), crop_mode="full"
        )
        .forward(crops)
        .tolist()
        == expected.tolist()
    )
    card = json.loads(onnx_card.read_text())
    assert card["export"]["format"] == "onnx" and card["export"]["inputs"]["crops"] == ["batch", 3, 32, 32]
    assert card["input"]["normalisation"]["mean"] == [0.485, 0.456, 0.406] and "[0, 10]" in card["score_scale"]
    protocol = card["input"]["crop_protocol"]  # for people; the fields beside it are for tools
    assert "EXIF orientation applied" in protocol  # how the crops' positions are derived:
    assert "drawn from the seed (0) and the xxh3-64 of the upright pixels" in protocol
    assert {key: card["input"][key] for key in ("crop_size", "crops", "crop_mode", "seed")} == {
        "crop_size": 32, "crops": 3, "crop_mode": "random", "seed": 0,
    }  # fmt: skip
    assert card["input"]["std"] == [0.229, 0.224, 0.225]
    markdown = onnx_card.with_suffix(".md").read_text()
    assert "vit_tiny_patch16_224" in markdown and "came without the card" in markdown


@pytest.mark.timeout(300)
def test_the_mlflow_model_loads_with_pyfunc_and_predicts_the_scorer_scores(tiny_run, tmp_path):
    import mlflow
    import pandas as pd

    from dist_syndr import config
    from dist_syndr.export import cards, mlflow_model
    from dist_syndr.runs import card as model_card
    from dist_syndr.tracking.tracker import tracking_uri

    run = tiny_run / "runs" / "tiny"
    card = cards.base_card(config.load(run / "config.yaml"), run / "config.yaml")
    card_path, _ = model_card.write(card, tmp_path / "model_card.json")
    folder = mlflow_model.save(run / "export" / "model_fp32.pt", run / "config.yaml", card_path, tmp_path / "model")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "mlruns"))
    run_id = client.create_run(client.create_experiment("scoring")).info.run_id
    client.log_artifacts(run_id, str(folder), "mlflow_model")
    with mlflow_tracking_at(tracking_uri(tmp_path / "mlruns")):
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/mlflow_model")
    photos = [str(p) for p in sorted((tiny_run / "photos").glob("img*.png"))]
    predicted = loaded.predict(pd.DataFrame({"path": photos}))
    assert list(predicted.columns) == ["score", "score_original", "error"]
    assert predicted["score_original"].isna().all() and predicted["error"].isna().all()  # no label scale known
    expected = Scorer.load(run, "cpu").score(photos)
    np.testing.assert_allclose(predicted["score"].to_numpy(dtype=float), expected, atol=1e-6)
    assert loaded.metadata.signature.inputs.input_names() == ["image", "path"]
    assert loaded.metadata.metadata["model_card"]["model"]["backbone"] == "vit_tiny_patch16_224"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_models_serve_scores_sent_image_bytes_and_paths_row_by_row(tiny_run, tmp_path):
    """`mlflow models serve` on 127.0.0.1, a real HTTP request: a base64 JPEG, a readable path and a missing path
    give three rows and status 200; the two scores equal score.py's, the missing file is an error row."""
    import base64
    import time
    import urllib.request

    from dist_syndr import config
    from dist_syndr.export import cards, mlflow_model
    from dist_syndr.runs import card as model_card
    from tests.conftest import free_port

    run = tiny_run / "runs" / "tiny"
    card_path, _ = model_card.write(cards.base_card(config.load(run / "config.yaml"), None), tmp_path / "card.json")
    folder = mlflow_model.save(run / "export" / "model_fp32.pt", run / "config.yaml", card_path, tmp_path / "model")
    jpeg, png = tmp_path / "sent.jpg", sorted((tiny_run / "photos").glob("img*.png"))[0]
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (56, 72, 3), dtype=np.uint8)).save(jpeg, quality=90)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"PYTHONPATH": str(PROJECT_ROOT), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    serve = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(folder), "--env-manager", "local"]
    server = subprocess.Popen(
        [*serve, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(1)
        records = [
            {"image": base64.b64encode(jpeg.read_bytes()).decode("ascii")},
            {"path": str(png)},
            {"path": str(tmp_path / "missing.png")},
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": records}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            status, body = response.status, response.read().decode()
    finally:
        server.terminate()
        server.wait(30)
    assert status == 200 and "NaN" not in body
    rows = json.loads(body)["predictions"]
    assert len(rows) == 3 and rows[2]["score"] is None and "unreadable file" in rows[2]["error"]
    completed = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "launchers" / "score.py"), "--checkpoint", str(run), "--out",
         str(tmp_path / "cli.csv"), str(jpeg), str(png)], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    cli = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader((tmp_path / "cli.csv").open())}
    assert rows[0]["error"] is None and rows[1]["error"] is None
    assert rows[0]["score"] == pytest.approx(cli["sent.jpg"], abs=1e-5)
    assert rows[1]["score"] == pytest.approx(cli[png.name], abs=1e-5)


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_two_ranks_split_the_files_and_rank_0_writes_what_one_process_writes(tiny_run, tmp_path):
    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    arguments = ["--checkpoint", "runs/tiny", "--crop-mode", "centre", "--workers", "0", "photos"]
    torchrun = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port()), str(PROJECT_ROOT / "launchers" / "score.py")]
    two = subprocess.run(
        [*torchrun, *arguments, "--out", str(tmp_path / "two.jsonl")],
        cwd=tiny_run,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    # rank 0 exits 3 (inputs skipped) after every rank is done and the others 0; torchrun reports a non-zero child
    # as its own exit 1 (and may stop a rank that is only tearing down by then)
    assert two.returncode == 1 and two.stderr.count("exitcode  : 3") == 1, two.stderr[-3000:]
    one = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "launchers" / "score.py"),
            *arguments,
            "--out",
            str(tmp_path / "one.jsonl"),
        ],
        cwd=tiny_run,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert one.returncode == 3, one.stderr[-3000:]
    rows = {
        name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    }
    assert [r["path"] for r in rows["two"]] == [r["path"] for r in rows["one"]] and len(rows["one"]) == 14
    assert [r["score"] for r in rows["two"]] == pytest.approx([r["score"] for r in rows["one"]], abs=1e-5)
    assert (tmp_path / "two.jsonl.errors.csv").read_text() == (tmp_path / "one.jsonl.errors.csv").read_text()
    assert two.stdout.count("images scored") == 1 and not list(tmp_path.glob("*.part-*"))


@pytest.mark.timeout(300)
def test_dali_decodes_what_pil_would_and_leaves_the_rest_to_pil(tiny_run, tmp_path):
    """decoder=dali (DALI's CPU graph here, ``mixed`` on a GPU): the pixels PIL gives, bit for bit, every EXIF
    orientation applied the same way; every other mode and every bad file takes PIL's path, same rows."""
    pytest.importorskip("nvidia.dali")
    from dist_syndr.imaging import decode
    from dist_syndr.scoring.dali_decode import DaliDecoder, decoded_files, is_complete_simple_image

    photos = tiny_run / "photos"
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for number, (path, _) in enumerate(_write_images(tmp_path / "pngs", count=3)):
        Image.open(path).convert("RGB").save(jpegs / f"photo{number}.jpg", quality=90)
    for orientation in range(1, 9):  # every EXIF orientation, also in a PNG's eXIf chunk (PIL's path)
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.open(photos / "img01.png").save(jpegs / f"oriented{orientation}.jpg", exif=exif, quality=90)
        Image.open(photos / "img01.png").save(tmp_path / "pngs" / f"oriented{orientation}.png", exif=exif)
    taken = {name: is_complete_simple_image((photos / name).read_bytes(), 32, 10**8) for name in
             ("img00.png", "gray.png", "rotated.jpg", "rgba.png", "palette.png", "cmyk.jpg", "gray16.png",
              "small.png", "truncated.png", "empty.png", "notes.jpg")}  # fmt: skip
    assert {name for name, is_taken in taken.items() if is_taken} == {"img00.png", "gray.png", "rotated.jpg"}

    decoder = DaliDecoder("cpu", batch_size=4)
    files = [photos / name for name in ("img00.png", "gray.png", "rotated.jpg")] + sorted(jpegs.iterdir())
    assert all(is_complete_simple_image(path.read_bytes(), 32, 10**8) for path in files)  # all through DALI
    for _, path, decoded in decoded_files(files, decoder, min_side=32, max_pixels=10**8):
        # the CPU decoders are one libpng / libjpeg-turbo, and one orient() for DALI's pixels and PIL's
        np.testing.assert_array_equal(decoded(), decode(path.read_bytes()), err_msg=str(path))
    assert not is_complete_simple_image((tmp_path / "pngs" / "oriented6.png").read_bytes(), 32, 10**8)

    scorer = Scorer.load(tiny_run / "runs" / "tiny", "cpu", crop_mode="centre")
    outputs = {}
    for way in ("pil", "dali"):
        out = tmp_path / way / "scores.csv"
        run_job(lambda: scorer, [str(photos), str(jpegs)], out, num_workers=1, max_pixels=10**8, decoder=way)
        errors = (out.parent / "scores.csv.errors.csv").read_text()
        outputs[way] = (_rows(out), errors)
    (pil_rows, pil_errors), (dali_rows, dali_errors) = outputs["pil"], outputs["dali"]
    assert dali_errors == pil_errors and set(dali_rows) == set(pil_rows) and len(pil_rows) == 14 + 3 + 8
    for path, row in pil_rows.items():
        assert float(dali_rows[path]["score"]) == pytest.approx(float(row["score"]), abs=1e-5), path
        assert dali_rows[path]["resized"] == row["resized"] and dali_rows[path]["crops"] == row["crops"]


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.timeout(300)
def test_dali_mixed_decoding_on_the_gpu_scores_as_pil_does(tiny_run, tmp_path):
    pytest.importorskip("nvidia.dali")
    scorer = Scorer.load(tiny_run / "runs" / "tiny", "cuda", crop_mode="centre", precision="fp32")
    outputs = {}
    for way in ("pil", "dali"):
        out = tmp_path / way / "scores.csv"
        run_job(lambda: scorer, [str(tiny_run / "photos")], out, num_workers=1, max_pixels=10**8, decoder=way)
        outputs[way] = _rows(out)
    assert set(outputs["dali"]) == set(outputs["pil"])
    for path, row in outputs["pil"].items():
        assert float(outputs["dali"][path]["score"]) == pytest.approx(float(row["score"]), abs=2e-2), path


# ---------------------------------------------------------------------------
# one decoding policy: a score is a function of the upright pixels (issue 25, item 3)


@pytest.mark.timeout(300)
def test_evaluate_and_score_give_one_image_one_score_whatever_its_tag_or_name(tiny_run, tmp_path):
    """evaluate.py and score.py, with the run's random crops and with one centre crop: the same prediction for a
    phone photo tagged Orientation=6 and for an untagged JPEG; the same bytes under three names, one score; the
    training loaders (torch and DALI's CPU pipeline) see the upright pixels the scorer sees."""
    from dist_syndr import imaging
    from dist_syndr.config import DataConfig
    from dist_syndr.loader import plan_epoch
    from dist_syndr.loader.crops import crop_anchors
    from dist_syndr.loader.torch_loader import TorchLoader
    from dist_syndr.sharding.shard_set import ShardSet
    from launchers import evaluate as evaluate_launcher
    from launchers import score as score_launcher

    upright = phone_photos(tmp_path / "set")
    names = {"set/phone.jpg": "labels/set/phone", "set/plain.jpg": "labels/set/plain"}
    (tmp_path / "labels.csv").write_text("path,score\nset/phone.jpg,3\nset/plain.jpg,7\n")
    for copy in ("other/copy.jpg", "other/deeper/phone.jpg"):  # the same bytes under two more names
        (tmp_path / copy).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / copy).write_bytes((tmp_path / "set" / "phone.jpg").read_bytes())
    run = str(tiny_run / "runs" / "tiny")
    for mode in ("random", "centre"):
        out = tmp_path / mode
        evaluate = ["--checkpoint", run, "--target", f"phones=csv:{tmp_path / 'labels.csv'}", "--out", str(out)]
        evaluate += ["--cache-dir", str(tmp_path / "cache"), "--no-tracking", "shard.num_workers=1"]
        assert evaluate_launcher.main([*evaluate, f"data.eval_crop_mode={mode}"]) == 0
        predicted = {
            row["key"]: float(row["prediction"]) for row in csv.DictReader(open(out / "phones_predictions.csv"))
        }
        score = ["--checkpoint", run, "--out", str(out / "scores.csv"), "--workers", "0", "--crop-mode", mode]
        assert score_launcher.main([*score, str(tmp_path / "set"), str(tmp_path / "other")]) == 0
        scored = {Path(path).relative_to(tmp_path).as_posix(): row for path, row in _rows(out / "scores.csv").items()}
        assert {row["crops"] for row in scored.values()} == {"3" if mode == "random" else "1"}
        for path, key in names.items():
            assert float(scored[path]["score"]) == pytest.approx(predicted[key], abs=1e-5), (mode, path)
        copies = [
            float(scored[path]["score"]) for path in ("set/phone.jpg", "other/copy.jpg", "other/deeper/phone.jpg")
        ]
        assert copies == [copies[0]] * 3, mode
    # the set holds the tagged photo upright as PNG and the untagged JPEG byte for byte
    shard_set = ShardSet(tmp_path / "cache" / "phones")
    assert shard_set.by_key["labels/set/phone"].image_extension == "png"
    assert shard_set.read_image_bytes("labels/set/plain") == (tmp_path / "set" / "plain.jpg").read_bytes()
    assert shard_set.by_key["labels/set/phone"].pixel_digest == imaging.pixel_digest(upright)
    np.testing.assert_array_equal(imaging.decode_file(tmp_path / "set" / "phone.jpg"), upright)
    # training crops: the loaders cut them from the pixels the scorer decodes
    config = DataConfig(crop=32, batch_size=2, num_workers=1)
    plan = plan_epoch(shard_set.keys(), config, seed=4, epoch=2).for_rank(0)
    loaders = {"torch": lambda: TorchLoader(shard_set, config, is_training=True)}
    try:
        from dist_syndr.loader.dali_pipeline import DaliLoader

        loaders["dali"] = lambda: DaliLoader(shard_set, config, is_training=True)
    except ImportError:
        pass
    for name, make in loaders.items():
        with make() as loader:
            crops = {
                k: image for batch in loader.batches(plan) for k, image in zip(batch.keys, batch.images, strict=True)
            }
        for path, key in names.items():
            pixels = imaging.decode_file(tmp_path / path)
            anchor = crop_anchors(
                key, pixels.shape[1], pixels.shape[0], 32, seed=4, epoch=2, num_crops=1, mode="random"
            )
            window = np.ascontiguousarray(pixels[anchor[0, 1] : anchor[0, 1] + 32, anchor[0, 0] : anchor[0, 0] + 32])
            expected = torch.from_numpy(np.stack([normalise(window)]))[0]
            torch.testing.assert_close(crops[key], expected, atol=1e-5, rtol=0, msg=f"{name} {path}")
