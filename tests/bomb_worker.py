"""Meets an image bomb on every path in one process: ``python -m tests.bomb_worker RUN_DIR FOLDER``.

Runs each path twice, first with good images only (the warm-up: every import, model and buffer in place),
then with ``bomb.png`` (a 21 KB PNG declaring 14000 x 13000 pixels) among them, and prints one JSON line:
what each path did with the bomb, every image size PIL was asked to decode, and the peak RSS after each round.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from dist_syndr import imaging
from dist_syndr.config import DataConfig, FeaturesConfig
from dist_syndr.evaluate.predict import predict
from dist_syndr.evaluate.targets import target_shard_set
from dist_syndr.features.embed import embed_paths
from dist_syndr.features.passes import PassOptions
from dist_syndr.loader import plan_epoch
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, decodes_fully
from dist_syndr.loader.torch_loader import TorchLoader
from dist_syndr.scoring.job import run_job
from dist_syndr.scoring.output import errors_path
from dist_syndr.scoring.scorer import Scorer
from dist_syndr.sharding import writer
from dist_syndr.sharding.shard_set import ShardSet
from tests.test_imaging import bomb_png

LOADS_FILE = "DIST_SYNDR_TEST_LOADS"  # every PIL decode (also in forked workers) appends the image size here


def _record_loads() -> None:
    original = ImageFile.ImageFile.load

    def load(self):
        with open(os.environ[LOADS_FILE], "a") as handle:
            handle.write(f"{self.size[0]}x{self.size[1]}\n")
        return original(self)

    ImageFile.ImageFile.load = load


def _peak_mb() -> dict[str, float]:
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _round(scorer: Scorer, folder: Path, name: str, images: list[Path]) -> dict:
    found: dict = {}
    # the sharding step: pool images, an engine input, the references' feature pass
    items = [writer.WorkItem(key=f"pool/{p.stem}", source_path=str(p), score=1.0) for p in images]
    items.append(
        writer.WorkItem(key="pool/engine", ref_path=str(images[-1]), is_engine=True, meta={"type": 1, "level": 1})
    )
    options = writer.WriteOptions(num_workers=1, on_error="skip")
    writer.write_shard_set(items, folder / f"pool-{name}", options, {"round": name})
    found["pool_skipped"] = [entry["key"] for entry in ShardSet(folder / f"pool-{name}").skipped]
    try:
        embed_paths(images, FeaturesConfig(backbone="resnet18", is_random_init=True, crop=32, batch_size=4))
    except imaging.ImageError as error:
        found["features_error"] = str(error)
    # a target set of a raw dataset, evaluated
    labels = folder / f"labels-{name}.csv"
    labels.write_text("path,score\n" + "".join(f"{p.name},{n}\n" for n, p in enumerate(images)))
    target = target_shard_set(name, f"csv:{labels}", folder / "targets", num_workers=1, on_error="skip")
    predictions = predict(scorer.model, target, scorer.config.data, PassOptions(device="cpu", dali="off"))
    found["target_skipped"] = [entry["key"] for entry in target.skipped]
    found["target_predicted"] = predictions.keys.tolist()
    # a shard set that holds the image as a member (written unchecked, as another tool might): both loaders
    original = writer._produce
    writer._produce = lambda item, options, cache: (Path(item.source_path).read_bytes(), "png", None, 0)
    try:
        members = writer.WorkItem
        pngs = [p for p in images if p.suffix == ".png"]
        writer.write_shard_set(
            [members(key=f"set/{p.stem}", source_path=str(p), score=1.0) for p in pngs],
            folder / f"members-{name}",
            writer.WriteOptions(num_workers=1),
            {"round": name},
        )
    finally:
        writer._produce = original
    shard_set = ShardSet(folder / f"members-{name}")
    config = DataConfig(crop=32, batch_size=2, num_workers=1, on_error="skip")
    plan = plan_epoch(shard_set.keys(), config, seed=0, epoch=0, is_training=False).for_rank(0)
    loaders = {"torch": TorchLoader}
    try:
        from dist_syndr.loader.dali_pipeline import DaliLoader

        loaders["dali"] = DaliLoader
    except ImportError:
        pass
    for kind, loader_class in loaders.items():
        with loader_class(shard_set, config, is_training=False) as loader:
            found[f"{kind}_skipped"] = [key for batch in loader.batches(plan) for key in batch.skipped_keys]
    try:  # under on_error=error the loaders raise the reader's message as it is
        MemberReader(SampleTable.from_shard_set(shard_set)).read_checked(len(shard_set) - 1, 32)
    except SampleError as error:
        found["loader_error"] = str(error)
    found["decodes_fully"] = [decodes_fully(p.read_bytes()) for p in pngs]
    # scoring inputs, through PIL and through DALI's routing
    for decoder in ("pil", "dali") if "dali" in loaders else ("pil",):
        out = folder / f"scores-{name}-{decoder}.csv"
        run_job(lambda scorer=scorer: scorer, [str(p) for p in images], out, max_pixels=imaging.DEFAULT_MAX_PIXELS,
                num_workers=0, decoder=decoder)  # fmt: skip
        found[f"score_errors_{decoder}"] = list(csv.DictReader(errors_path(out).open()))
    found["peak_mb"] = _peak_mb()
    return found


def main(run_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[LOADS_FILE] = str(folder / "loads.txt")
    _record_loads()
    rng = np.random.default_rng(0)
    good = []
    for number, format in enumerate(("PNG", "JPEG")):
        path = folder / f"good{number}.{format.lower().replace('jpeg', 'jpg')}"
        Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)).save(path, format=format)
        good.append(path)
    (folder / "bomb.png").write_bytes(bomb_png())
    scorer = Scorer.load(run_dir, "cpu")
    rounds = {"good": _round(scorer, folder, "good", good)}
    rounds["bomb"] = _round(scorer, folder, "bomb", [*good, folder / "bomb.png"])
    loads = sorted(set((folder / "loads.txt").read_text().split()))
    print(json.dumps({"rounds": rounds, "decoded_sizes": loads}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
