"""Dataset readers against tiny replicas of every on-disk layout of docs/METHOD.md section 7."""

from __future__ import annotations

import logging
import os
import pathlib
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_syndr.config import PoolKind
from dist_syndr.pools import kadid
from dist_syndr.pools.authentic import read_bid, read_koniq10k, read_livec
from dist_syndr.pools.candidates import read_kadid_add81, read_kadis700k, read_reference_images
from dist_syndr.pools.generic import read_csv_pool, read_folder
from dist_syndr.pools.kadid import KADID_EXCLUDED_TRAINING_REFS, kadid_training_refs, read_kadid10k
from dist_syndr.pools.readers import READERS, read_pool
from dist_syndr.pools.synthetic_targets import read_csiq, read_live, read_pipal, read_tid2013

KADID_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared/fixtures/kadid10k/dmos.csv"
_FORMATS = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}


def _image(path: Path) -> Path:
    """An 8x8 image in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (len(path.name) * 7 % 256, 90, 160)).save(path, format=_FORMATS[path.suffix.lower()])
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _scaled(values, lower_better=False):
    values = np.asarray(values, dtype=float)
    scaled = (values - values.min()) / (values.max() - values.min()) * 10
    return 10 - scaled if lower_better else scaled


def _by_key(samples):
    return {sample.key: sample for sample in samples}


def _cell(names):
    """A MATLAB cell column as savemat writes it: an object array of strings."""
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    return cell


# ---------------------------------------------------------------- KADID-10k


def _kadid_replica(root: Path) -> list[float]:
    rows, dmos = [], []
    for ref_number in (1, 2, 3):
        for distortion_type in (1, 25):
            for level in (1, 5):
                value = round(1.0 + ref_number + 0.25 * distortion_type / 25 - 0.5 * level / 5, 4)
                rows.append(
                    f"I{ref_number:02d}_{distortion_type:02d}_{level:02d}.png,I{ref_number:02d}.png,{value},0.1"
                )
                dmos.append(value)
                _image(root / "images" / f"I{ref_number:02d}_{distortion_type:02d}_{level:02d}.png")
    _image(root / "images" / "I01.png")
    _image(root / "images" / "I02.png")
    _image(root / "ref_imgs" / "I03.png")
    _write(root / "dmos.csv", "dist_img,ref_img,dmos,var\n" + "\n".join(rows) + "\n")
    return dmos


def test_kadid10k_reads_scores_refs_and_names(tmp_path):
    dmos = _kadid_replica(tmp_path)
    samples = read_kadid10k(tmp_path)
    assert len(samples) == 12
    assert [s.key for s in samples] == sorted(s.key for s in samples)
    keys_in_csv_order = [
        f"kadid10k/I{r:02d}_{t:02d}_{level:02d}" for r in (1, 2, 3) for t in (1, 25) for level in (1, 5)
    ]
    assert {s.key for s in samples} == set(keys_in_csv_order)
    by_key = _by_key(samples)
    for key, score in zip(keys_in_csv_order, _scaled(dmos), strict=True):
        assert by_key[key].score == pytest.approx(score, abs=1e-12)
    sample = by_key["kadid10k/I03_25_05"]
    assert (sample.ref, sample.distortion_type, sample.level) == ("kadid10k/I03", 25, 5)
    assert sample.ref_path == tmp_path / "ref_imgs" / "I03.png"
    assert by_key["kadid10k/I01_01_01"].ref_path == tmp_path / "images" / "I01.png"
    assert sample.path == tmp_path / "images" / "I03_25_05.png"
    assert {s.origin for s in samples} == {"original"} and {s.source for s in samples} == {"kadid10k"}
    assert min(s.score for s in samples) == 0.0 and max(s.score for s in samples) == 10.0


def test_kadid10k_reference_subset_keeps_global_scores(tmp_path):
    _kadid_replica(tmp_path)
    everything = _by_key(read_kadid10k(tmp_path))
    subset = read_kadid10k(tmp_path, references=["I02.png", "I03"])
    assert len(subset) == 8 and {s.ref for s in subset} == {"kadid10k/I02", "kadid10k/I03"}
    assert all(s.score == everything[s.key].score for s in subset)
    with pytest.raises(ValueError, match="I99"):
        read_kadid10k(tmp_path, references=["I99.png"])


def test_kadid10k_missing_image_errors_or_skips(tmp_path, caplog):
    _kadid_replica(tmp_path)
    (tmp_path / "images" / "I02_25_01.png").unlink()
    with pytest.raises(ValueError, match=r"dmos\.csv.*I02_25_01\.png"):
        read_kadid10k(tmp_path)
    with caplog.at_level(logging.WARNING):
        samples = read_kadid10k(tmp_path, on_missing="skip")
    assert len(samples) == 11 and "kadid10k/I02_25_01" not in _by_key(samples)
    assert "skipping 1 listed image" in caplog.text
    with pytest.raises(ValueError, match="on_missing"):
        read_kadid10k(tmp_path, on_missing="ignore")


def test_kadid10k_missing_column_and_duplicate_row(tmp_path):
    _kadid_replica(tmp_path)
    labels = tmp_path / "dmos.csv"
    text = labels.read_text()
    labels.write_text(text.replace("dmos,var", "score,var", 1))
    with pytest.raises(ValueError, match=r"dmos\.csv.*missing column"):
        read_kadid10k(tmp_path)
    lines = text.splitlines()
    labels.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ValueError, match="duplicate sample key 'kadid10k/I01_01_01'"):
        read_kadid10k(tmp_path)


def test_kadid_training_refs_leave_out_the_seven():
    refs = kadid_training_refs()
    assert len(refs) == 74 and refs[0] == "I01.png" and refs[-1] == "I81.png"
    assert not {f"{name}.png" for name in KADID_EXCLUDED_TRAINING_REFS} & set(refs)
    assert KADID_EXCLUDED_TRAINING_REFS == ("I06", "I07", "I18", "I19", "I53", "I58", "I70")


def test_real_dmos_csv_gives_74_refs_of_125_rows():
    if not KADID_FIXTURE.is_file():
        pytest.skip(f"real KADID-10k dmos.csv not found at {KADID_FIXTURE}")
    records = kadid.read_dmos_csv(KADID_FIXTURE)
    training = set(kadid_training_refs())
    kept = [r for r in records if r.ref_img in training]
    assert len(records) == 10_125 and len(kept) == 9_250
    counts = {}
    for record in kept:
        counts[record.ref_img] = counts.get(record.ref_img, 0) + 1
    assert len(counts) == 74 and set(counts.values()) == {125}
    assert kadid.label_table(kept, sorted(training)).shape == (74, 125)


# ---------------------------------------------------------------- kadid_add81 and KADIS-700k


def _add81_replica(folder: Path) -> None:
    for stem in ("alpha", "beta-2"):
        _image(folder / "ref_imgs" / f"{stem}.png")
        for distortion_type, level in ((1, 1), (9, 3), (25, 5)):
            _image(folder / "dist_imgs" / f"{stem}_{distortion_type:02d}_{level:02d}.bmp")


@pytest.mark.parametrize("nested", [True, False])
def test_kadid_add81_from_either_root(tmp_path, nested):
    _add81_replica(tmp_path / "kadid_add81")
    root = tmp_path if nested else tmp_path / "kadid_add81"
    samples = read_kadid_add81(root)
    assert len(samples) == 6 and all(s.score is None for s in samples)
    sample = _by_key(samples)["kadid_add81/beta-2_09_03"]
    assert (sample.ref, sample.distortion_type, sample.level, sample.origin) == (
        "kadid_add81/beta-2",
        9,
        3,
        "original",
    )
    assert sample.ref_path == tmp_path / "kadid_add81" / "ref_imgs" / "beta-2.png"
    references = read_reference_images(root)
    assert [s.key for s in references] == ["kadid_add81/alpha", "kadid_add81/beta-2"]
    assert {s.origin for s in references} == {"reference"} and references[0].score is None


def test_kadid_add81_rejects_badly_named_image(tmp_path):
    _add81_replica(tmp_path)
    _image(tmp_path / "dist_imgs" / "alpha_blur.bmp")
    with pytest.raises(ValueError, match="alpha_blur.bmp"):
        read_kadid_add81(tmp_path)


def _kadis_replica(root: Path, stems, *, empty_files: bool = False) -> None:
    make = (lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.touch())) if empty_files else _image
    (root / "dist_imgs").mkdir(parents=True, exist_ok=True)
    lines = ["ref_im,dist_type_1,dist_type_2,dist_type_3,dist_type_4,dist_type_5"]
    for number, stem in enumerate(stems):
        distortion_type = number % 25 + 1
        lines.append(f"{stem}.png,{distortion_type},3,4,5,6")
        make(root / "ref_imgs" / f"{stem}.png")
        for level in range(1, 6):
            make(root / "dist_imgs" / f"{stem}_{distortion_type:02d}_{level:02d}.bmp")
    _write(root / "kadis700k_ref_imgs.csv", "\n".join(lines) + "\n")


def test_kadis700k_parses_names_and_reconciles_the_list(tmp_path, caplog):
    _kadis_replica(tmp_path, ["a-fleshy-plant-1464418", "b-road-22"])
    samples = read_kadis700k(tmp_path)
    assert len(samples) == 10 and all(s.score is None and s.source == "kadis700k" for s in samples)
    sample = _by_key(samples)["kadis700k/b-road-22_02_04"]
    assert (sample.ref, sample.distortion_type, sample.level) == ("kadis700k/b-road-22", 2, 4)
    assert sample.ref_path == tmp_path / "ref_imgs" / "b-road-22.png"
    _image(tmp_path / "dist_imgs" / "unlisted_03_01.bmp")
    with caplog.at_level(logging.WARNING):
        assert len(read_kadis700k(tmp_path)) == 10
    assert "not listed" in caplog.text
    for level in range(1, 6):
        (tmp_path / "dist_imgs" / f"b-road-22_02_{level:02d}.bmp").unlink()
    with pytest.raises(ValueError, match="b-road-22_"):
        read_kadis700k(tmp_path)
    assert len(read_kadis700k(tmp_path, on_missing="skip")) == 5
    (tmp_path / "kadis700k_ref_imgs.csv").write_text("name\nx.png\n")
    with pytest.raises(ValueError, match=r"kadis700k_ref_imgs\.csv.*ref_im"):
        read_kadis700k(tmp_path)


def test_kadis700k_scale_uses_scans_not_per_file_checks(tmp_path, monkeypatch):
    stems = [f"img{n:05d}" for n in range(600)]
    _kadis_replica(tmp_path, stems, empty_files=True)
    calls = {"count": 0}

    def counted(original):
        def wrapper(*args, **kwargs):
            calls["count"] += 1
            return original(*args, **kwargs)

        return wrapper

    for owner, name in ((pathlib.Path, "exists"), (pathlib.Path, "is_file"), (os.path, "exists"), (os.path, "isfile")):
        monkeypatch.setattr(owner, name, counted(getattr(owner, name)))
    samples = read_kadis700k(tmp_path)
    assert len(samples) == 3_000 and calls["count"] < 10
    assert samples[0].key == "kadis700k/img00000_01_01" and samples[-1].key == "kadis700k/img00599_25_05"


# ---------------------------------------------------------------- authentic sets


def test_livec_skips_training_entries_and_scales_test_mos(tmp_path):
    from scipy.io import savemat

    names = [f"t{n}.bmp" for n in range(1, 8)] + ["3.bmp", "10.bmp", "1000.JPG"]
    mos = np.array([[50.0] * 7 + [20.0, 80.0, 35.0]])
    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(names)})
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    for name in names[7:]:
        _image(tmp_path / "Images" / name)
    _image(tmp_path / "Images" / "trainingImages" / "t1.bmp")
    samples = read_livec(tmp_path)
    assert [s.key for s in samples] == ["livec/10", "livec/1000", "livec/3"]
    assert [s.score for s in samples] == pytest.approx([10.0, 2.5, 0.0])
    assert all(s.ref is None and s.distortion_type is None and s.source == "livec" for s in samples)
    assert _by_key(samples)["livec/1000"].path == tmp_path / "Images" / "1000.JPG"
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos[:, :-1]})
    with pytest.raises(ValueError, match="AllMOS_release.mat holds 9 scores"):
        read_livec(tmp_path)


def test_koniq10k_uses_mos_column(tmp_path):
    header = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"
    rows = [
        "10004473376.jpg,0,0,25,73,7,105,3.828571,0.527278,77.38",
        "100066.jpg,0,2,5,80,1,88,2.0,0.4,40.0",
        "x.jpg,0,0,0,0,1,1,4.5,0,90.0",
    ]
    _write(tmp_path / "koniq10k_scores_and_distributions.csv", "\n".join([header] + rows) + "\n")
    for name in ("10004473376.jpg", "100066.jpg", "x.jpg"):
        _image(tmp_path / "512x384" / name)
    samples = _by_key(read_koniq10k(tmp_path))
    assert samples["koniq10k/100066"].score == 0.0 and samples["koniq10k/x"].score == 10.0
    assert samples["koniq10k/10004473376"].score == pytest.approx((3.828571 - 2.0) / 2.5 * 10)
    (tmp_path / "512x384" / "x.jpg").unlink()
    with pytest.raises(ValueError, match="x.jpg"):
        read_koniq10k(tmp_path)


def _bid_replica(root: Path, header=("Image Number", "Average Subjective Grade")) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(list(header))
    for number, grade in ((1, 4.0), (2, 1.5), (17, 0.5)):
        sheet.append([number, grade])
        _image(root / "ImageDatabase" / f"DatabaseImage{number:04d}.JPG")
    workbook.save(root / "DatabaseGrades.xlsx")


def test_bid_reads_workbook_and_finds_images_below_root(tmp_path):
    _bid_replica(tmp_path)
    samples = read_bid(tmp_path)
    assert [s.key for s in samples] == ["bid/DatabaseImage0001", "bid/DatabaseImage0002", "bid/DatabaseImage0017"]
    assert [s.score for s in samples] == pytest.approx([10.0, 1 / 3.5 * 10, 0.0])
    assert samples[2].path == tmp_path / "ImageDatabase" / "DatabaseImage0017.JPG"


def test_bid_missing_column_names_the_workbook(tmp_path):
    _bid_replica(tmp_path, header=("Image Number", "Grade"))
    with pytest.raises(ValueError, match=r"DatabaseGrades\.xlsx.*Average Subjective Grade"):
        read_bid(tmp_path)


# ---------------------------------------------------------------- synthetic targets


def _pipal_replica(root: Path) -> None:
    train = root / "train"
    for ref, entries in (("A0001", [("00", "01", 1500.0), ("06", "12", 1100.0)]), ("A0002", [("03", "00", 1300.0)])):
        _image(train / "Train_Ref" / f"{ref}.bmp")
        lines = []
        for family, subtype, score in entries:
            _image(train / "Distortion" / f"{ref}_{family}_{subtype}.bmp")
            lines.append(f"{ref}_{family}_{subtype}.bmp,{score}")
        _write(train / "Train_Label" / f"{ref}.txt", "\n".join(lines) + "\n")


def test_pipal_reads_families_and_subtypes(tmp_path):
    _pipal_replica(tmp_path)
    samples = _by_key(read_pipal(tmp_path))
    assert set(samples) == {"pipal/A0001_00_01", "pipal/A0001_06_12", "pipal/A0002_03_00"}
    sample = samples["pipal/A0001_06_12"]
    assert (sample.distortion_type, sample.level, sample.ref, sample.score) == (6, 12, "pipal/A0001", 0.0)
    assert samples["pipal/A0001_00_01"].score == 10.0 and samples["pipal/A0002_03_00"].score == pytest.approx(5.0)
    assert sample.ref_path == tmp_path / "train" / "Train_Ref" / "A0001.bmp"
    _write(tmp_path / "train" / "Train_Label" / "A0002.txt", "A0002_03_00.bmp,1300\nA0002_03_01.bmp 12\n")
    with pytest.raises(ValueError, match=r"A0002\.txt:2"):
        read_pipal(tmp_path)


def test_tid2013_matches_names_case_insensitively(tmp_path):
    _image(tmp_path / "reference_images" / "I01.BMP")
    _image(tmp_path / "reference_images" / "I25.BMP")
    _image(tmp_path / "distorted_images" / "i01_01_1.bmp")
    _image(tmp_path / "distorted_images" / "i01_24_5.bmp")
    _image(tmp_path / "distorted_images" / "I25_07_3.BMP")
    _write(tmp_path / "mos_with_names.txt", "5.51429 i01_01_1.bmp\n1.0 i01_24_5.bmp\n\n7.0 i25_07_3.bmp\n")
    samples = _by_key(read_tid2013(tmp_path))
    assert set(samples) == {"tid2013/i01_01_1", "tid2013/i01_24_5", "tid2013/i25_07_3"}
    sample = samples["tid2013/i25_07_3"]
    assert (sample.ref, sample.distortion_type, sample.level, sample.score) == ("tid2013/I25", 7, 3, 10.0)
    assert sample.path.name == "I25_07_3.BMP" and sample.ref_path.name == "I25.BMP"
    assert samples["tid2013/i01_01_1"].score == pytest.approx(4.51429 / 6 * 10)
    _write(tmp_path / "mos_with_names.txt", "5.5 i01_01_1.bmp\n2.0 foo.bmp\n")
    with pytest.raises(ValueError, match=r"mos_with_names\.txt:2"):
        read_tid2013(tmp_path)


_LIVE_FOLDERS = (("jp2k", 2), ("jpeg", 2), ("wn", 1), ("gblur", 1), ("fastfading", 1))


def _live_replica(root: Path) -> np.ndarray:
    from scipy.io import savemat

    for folder, count in _LIVE_FOLDERS:
        for number in range(1, count + 1):
            _image(root / folder / f"img{number}.bmp")
    _image(root / "refimgs" / "bikes.bmp")
    _image(root / "refimgs" / "parrots.bmp")
    dmos = np.array([[30.0, 0.0, 50.0, 70.0, 10.0, 40.0, 60.0]])
    orgs = np.array([[0, 1, 0, 0, 0, 0, 0]], dtype=np.uint8)
    refnames = ["bikes.bmp", "bikes.bmp", "parrots.bmp", "bikes.bmp", "parrots.bmp", "bikes.bmp", "parrots.bmp"]
    savemat(root / "dmos_realigned.mat", {"dmos_new": dmos, "orgs": orgs})
    savemat(root / "refnames_all.mat", {"refnames_all": _cell(refnames).T})
    return dmos.ravel()


def test_live_skips_reference_copies_and_flips_dmos(tmp_path):
    dmos = _live_replica(tmp_path)
    samples = read_live(tmp_path, folders=_LIVE_FOLDERS)
    # mat entry order: jp2k/img1, jp2k/img2 (reference copy), jpeg/img1, jpeg/img2, wn/img1, gblur/img1,
    # fastfading/img1
    entry_of = {"live/jp2k/img1": 0, "live/jpeg/img1": 2, "live/jpeg/img2": 3, "live/wn/img1": 4, "live/gblur/img1": 5}
    entry_of["live/fastfading/img1"] = 6
    assert [s.key for s in samples] == sorted(entry_of)
    expected = _scaled(dmos, lower_better=True)  # over all entries, reference copy included
    by_key = _by_key(samples)
    for key, entry in entry_of.items():
        assert by_key[key].score == pytest.approx(expected[entry])
    assert by_key["live/jpeg/img2"].score == 0.0
    folder_order = ("live/jp2k/img1", "live/jpeg/img1", "live/wn/img1", "live/gblur/img1", "live/fastfading/img1")
    assert [by_key[k].distortion_type for k in folder_order] == [1, 2, 3, 4, 5]
    assert by_key["live/wn/img1"].ref == "live/parrots" and by_key["live/wn/img1"].level is None
    assert by_key["live/wn/img1"].ref_path == tmp_path / "refimgs" / "parrots.bmp"
    with pytest.raises(ValueError, match="dmos_new has 7"):
        read_live(tmp_path)  # the full-size folder counts do not fit the replica


def _csiq_replica(root: Path) -> None:
    _image(root / "src_imgs" / "1600.png")
    _image(root / "src_imgs" / "aerial_city.png")
    _image(root / "dst_imgs" / "awgn" / "1600.AWGN.1.png")
    _image(root / "dst_imgs" / "jpeg2000" / "aerial_city.jpeg2000.5.png")
    _image(root / "dst_imgs" / "blur" / "1600.BLUR.3.png")
    rows = ["1600.AWGN.1,1600,0.2", "aerial_city.jpeg2000.5.png,aerial_city.png,0.8", "1600.BLUR.3,1600,0.4"]
    _write(root / "csiq_dmos.csv", "dist_img,ref_img,dmos\n" + "\n".join(rows) + "\n")


def test_csiq_finds_images_in_type_folders_and_flips_dmos(tmp_path):
    _csiq_replica(tmp_path)
    samples = _by_key(read_csiq(tmp_path))
    assert set(samples) == {"csiq/1600.AWGN.1", "csiq/aerial_city.jpeg2000.5", "csiq/1600.BLUR.3"}
    assert samples["csiq/1600.AWGN.1"].score == 10.0 and samples["csiq/aerial_city.jpeg2000.5"].score == 0.0
    assert samples["csiq/1600.BLUR.3"].score == pytest.approx(10 * (1 - 0.2 / 0.6))
    sample = samples["csiq/aerial_city.jpeg2000.5"]
    assert (sample.distortion_type, sample.level, sample.ref) == (3, 5, "csiq/aerial_city")
    assert sample.ref_path == tmp_path / "src_imgs" / "aerial_city.png"
    assert samples["csiq/1600.BLUR.3"].path == tmp_path / "dst_imgs" / "blur" / "1600.BLUR.3.png"


def test_csiq_rejects_ambiguous_layouts(tmp_path):
    _csiq_replica(tmp_path)
    _image(tmp_path / "dst_imgs" / "copy" / "1600.AWGN.1.png")
    with pytest.raises(ValueError, match="occurs twice"):
        read_csiq(tmp_path)
    (tmp_path / "dst_imgs" / "copy" / "1600.AWGN.1.png").unlink()
    _write(tmp_path / "other.csv", "a,b\n")
    with pytest.raises(ValueError, match="exactly one DMOS CSV"):
        read_csiq(tmp_path)
    assert len(read_csiq(tmp_path, labels="csiq_dmos.csv")) == 3


# ---------------------------------------------------------------- generic CSV and folder


def test_csv_pool_resolves_paths_and_scales(tmp_path):
    _image(tmp_path / "imgs" / "a.png")
    _image(tmp_path / "imgs" / "sub" / "b.jpg")
    _image(tmp_path / "refs" / "r.png")
    outside = _image(tmp_path.parent / f"{tmp_path.name}_outside" / "c.bmp")
    text = (
        "path,score,ref,type,level\nimgs/a.png,2,refs/r.png,3,1\nimgs/sub/b.jpg,4,,,\n"
        f"{outside},6,refs/gone.png,7.0,\n"
    )
    labels = _write(tmp_path / "mypool.csv", text)
    samples = _by_key(read_csv_pool(labels))
    assert set(samples) == {"mypool/imgs/a", "mypool/imgs/sub/b", "mypool/c"}
    a = samples["mypool/imgs/a"]
    assert (a.score, a.ref, a.distortion_type, a.level) == (0.0, "mypool/refs/r", 3, 1)
    assert a.ref_path == tmp_path / "refs" / "r.png"
    assert samples["mypool/imgs/sub/b"].score == 5.0 and samples["mypool/imgs/sub/b"].ref is None
    c = samples["mypool/c"]
    assert (c.score, c.ref_path, c.distortion_type, c.level, c.path) == (10.0, None, 7, None, outside)
    flipped = _by_key(read_csv_pool(labels, is_lower_better=True, source="other"))
    assert flipped["other/imgs/a"].score == 10.0 and flipped["other/c"].score == 0.0
    kept = _by_key(read_csv_pool(labels, is_normalised=True))
    assert [kept[k].score for k in ("mypool/imgs/a", "mypool/imgs/sub/b", "mypool/c")] == [2.0, 4.0, 6.0]


def test_csv_pool_errors_name_file_and_row(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"p\.csv.*missing column.*score"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,mos\na.png,1\n"))
    with pytest.raises(ValueError, match=r"p\.csv:3.*outside \[0, 10\]"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score\na.png,1\na.jpg,11\n"), is_normalised=True)
    with pytest.raises(ValueError, match=r"p\.csv:3: 'x' is not a number"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score\na.png,1\na.jpg,x\n"))
    with pytest.raises(ValueError, match="duplicate sample key 'p/a'"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score\na.png,1\na.jpg,2\n"))
    with pytest.raises(ValueError, match=r"p\.csv.*absent.*gone\.png"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score\na.png,1\ngone.png,2\n"))
    with pytest.raises(ValueError, match=r"p\.csv:2 \(type\)"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score,type\na.png,1,1.5\na.jpg,2,1\n"))


def test_folder_reads_recursively_as_references(tmp_path):
    _image(tmp_path / "pristine" / "z.png")
    _image(tmp_path / "pristine" / "b" / "a.JPG")
    _image(tmp_path / "pristine" / "b" / "c.tif")
    _write(tmp_path / "pristine" / "notes.txt", "not an image")
    samples = read_folder(tmp_path / "pristine")
    assert [s.key for s in samples] == ["pristine/b/a", "pristine/b/c", "pristine/z"]
    assert all(s.origin == "reference" and s.score is None and s.ref == s.key for s in samples)
    assert [s.key for s in read_folder(tmp_path / "pristine", extensions=(".png",), source="mine")] == ["mine/z"]
    _image(tmp_path / "pristine" / "z.bmp")
    with pytest.raises(ValueError, match="duplicate sample key 'pristine/z'"):
        read_folder(tmp_path / "pristine")


# ---------------------------------------------------------------- registry


def test_registry_dispatches_and_rejects_unknown_kind(tmp_path):
    kinds = "kadid10k kadid_add81 kadis700k livec koniq10k bid pipal tid2013 live csiq csv folder"
    assert set(READERS) == set(kinds.split())
    _add81_replica(tmp_path)
    assert read_pool("kadid_add81", tmp_path) == read_kadid_add81(tmp_path)
    assert len(read_pool("folder", tmp_path / "ref_imgs", source="x")) == 2
    with pytest.raises(ValueError, match="unknown pool kind 'koniq'.*kadid10k.*koniq10k"):
        read_pool("koniq", tmp_path)


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"dmos\.csv"):
        read_pool("kadid10k", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"AllImages_release\.mat"):
        read_pool("livec", tmp_path)


def test_short_csv_row_reads_as_empty_cells(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    labels = _write(tmp_path / "p.csv", "path,score,ref\na.png,1\nb.png,3,a.png,extra\n")
    samples = _by_key(read_csv_pool(labels))
    assert samples["p/a"].ref is None and samples["p/b"].ref == "p/a" and samples["p/b"].score == 10.0
    with pytest.raises(ValueError, match=r"p\.csv:2: '' is not a number"):
        read_csv_pool(_write(tmp_path / "p.csv", "path,score\na.png\nb.png,2\n"))


def test_every_pool_kind_of_the_config_has_a_reader():
    assert set(READERS) == set(typing.get_args(PoolKind))
