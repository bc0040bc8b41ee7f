"""Build the embedded demo sample ``weakseg/assets/demo/oxford-iiit-pet-mini`` from the Oxford-IIIT Pet
subset.

Reads ``../shared/data/oxford-iiit-pet-subset`` (relative to the repository root; override with ``--source``)
and writes, in the official Oxford-IIIT Pet layout so that ``OxfordPet(root, split=...)`` loads it unchanged:

    images/*.jpg                  longer side 192 px (cv2.INTER_AREA), JPEG quality 85
    annotations/trimaps/*.png     same size as the image (cv2.INTER_NEAREST), values 1/2/3 kept
    annotations/xmls/*.xml        head boxes and <size> rescaled (only where the source has an xml)
    annotations/list.txt, trainval.txt, test.txt   rows copied from the source lists
    LICENSE.txt, ATTRIBUTION

The choice is deterministic: per breed, the names of a split in natural order (breed, number), every k-th,
with k = (names in the split) // (images wanted). Running the script again rebuilds the same files.

    .venv/bin/python benchmarks/make_demo_sample.py
"""

from __future__ import annotations

import argparse
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "oxford-iiit-pet-subset"
DEST = REPO / "weakseg" / "assets" / "demo" / "oxford-iiit-pet-mini"
LONG_SIDE = 192
JPEG_QUALITY = 85
PER_BREED = {"trainval": 16, "test": 8}
CC_BY_SA_TEXT = [  # the full legal code, if a copy is on this machine; the notice links it otherwise
    Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/licenses/CC-BY-SA-4.0.txt",
    Path("/usr/share/common-licenses/CC-BY-SA-4.0"),
]

ATTRIBUTION = """\
Oxford-IIIT Pet, mini demo sample (72 images of 3 breeds)
==========================================================

Source dataset:
  The Oxford-IIIT Pet Dataset
  Omkar M. Parkhi, Andrea Vedaldi, Andrew Zisserman, C. V. Jawahar,
  "Cats and Dogs", IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2012.
  https://www.robots.ox.ac.uk/~vgg/data/pets/
  Licence: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0),
  https://creativecommons.org/licenses/by-sa/4.0/ ; the copyright of the images remains with their
  original owners (see the paper for the list of source websites).

Obtained from:
  a 3-breed subset (Abyssinian, american_bulldog, Bengal) copied from the public GitHub repository
  Naveen-Dodda/Sample_Pets_dataset at commit 9281626, in the dataset's official layout.

Changes made here (by benchmarks/make_demo_sample.py in the weakseg repository):
  - only {n_trainval} trainval images (16 per breed) and {n_test} test images (8 per breed) were kept,
    chosen deterministically (every k-th name per breed and split);
  - images were downscaled so that their longer side is {long_side} px (OpenCV INTER_AREA) and re-encoded
    as JPEG (quality {quality});
  - trimaps were resized to the same size with nearest-neighbour interpolation (values 1/2/3 kept);
  - the head boxes and the <size> fields of the VOC xml files were rescaled to the new image size;
  - annotations/list.txt, trainval.txt and test.txt keep the official rows for the kept images only.

This sample is distributed under the same licence, CC BY-SA 4.0 (see LICENSE.txt).
"""

NOTICE = """\
The files in this folder (images/, annotations/) are a modified excerpt of the Oxford-IIIT Pet Dataset
(O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, "Cats and Dogs", CVPR 2012,
https://www.robots.ox.ac.uk/~vgg/data/pets/), licensed under the Creative Commons Attribution-ShareAlike 4.0
International License (CC BY-SA 4.0): https://creativecommons.org/licenses/by-sa/4.0/legalcode
The copyright of the images remains with their original owners. See ATTRIBUTION for the source and the
changes. This excerpt is shared under the same licence, which covers only this folder, not the weakseg
code.
"""


def natural_key(name: str) -> tuple[str, int]:
    breed, _, number = name.rpartition("_")
    return breed, int(number)


def read_rows(path: Path) -> list[str]:
    """Non-comment, non-empty lines of an official list file, unchanged."""
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def pick(rows: list[str], per_breed: int) -> set[str]:
    """Every k-th name of each breed (natural order), ``per_breed`` names per breed."""
    by_class: dict[str, list[str]] = {}
    for row in rows:
        name, class_id = row.split()[:2]
        by_class.setdefault(class_id, []).append(name)
    chosen = set()
    for names in by_class.values():
        names = sorted(names, key=natural_key)
        if len(names) < per_breed:
            raise SystemExit(f"only {len(names)} images of {names[0]} in the split, {per_breed} wanted")
        step = len(names) // per_breed
        chosen.update(names[::step][:per_breed])
    return chosen


def new_size(height: int, width: int) -> tuple[int, int]:
    scale = LONG_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def rescale_xml(src: Path, dst: Path, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> None:
    """Scale the VOC boxes (1-based, inclusive) and the <size> fields from old_hw to new_hw."""
    tree = ET.parse(src)
    root = tree.getroot()
    (oh, ow), (nh, nw) = old_hw, new_hw
    sx, sy = nw / ow, nh / oh
    size = root.find("size")
    if size is not None:
        size.find("width").text = str(nw)
        size.find("height").text = str(nh)
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        # to 0-based [x0, x1) edges, scale, back to 1-based inclusive pixel indices inside the image
        nx0 = min(max(round((x0 - 1) * sx), 0), nw - 1)
        ny0 = min(max(round((y0 - 1) * sy), 0), nh - 1)
        nx1 = min(max(round(x1 * sx), nx0 + 1), nw)
        ny1 = min(max(round(y1 * sy), ny0 + 1), nh)
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (nx0 + 1, ny0 + 1, nx1, ny1), strict=True):
            box.find(key).text = str(value)
    dst.write_text(ET.tostring(root, encoding="unicode"))


def convert(source: Path, dest: Path, name: str) -> None:
    image = cv2.imread(str(source / "images" / f"{name}.jpg"), cv2.IMREAD_COLOR)  # also decodes PNG/GIF
    trimap = cv2.imread(str(source / "annotations" / "trimaps" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    if image is None or trimap is None or trimap.shape != image.shape[:2]:
        raise SystemExit(f"unreadable or mismatched source files for {name}")
    h, w = image.shape[:2]
    nh, nw = new_size(h, w)
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    tri = cv2.resize(trimap, (nw, nh), interpolation=cv2.INTER_NEAREST)
    if not set(np.unique(tri).tolist()) <= {1, 2, 3}:
        raise SystemExit(f"unexpected trimap values in {name}")
    ok = cv2.imwrite(str(dest / "images" / f"{name}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok &= cv2.imwrite(str(dest / "annotations" / "trimaps" / f"{name}.png"), tri, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit(f"cannot write {name}")
    xml = source / "annotations" / "xmls" / f"{name}.xml"
    if xml.is_file():
        rescale_xml(xml, dest / "annotations" / "xmls" / f"{name}.xml", (h, w), (nh, nw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args()
    source, dest = args.source, args.dest
    ann = source / "annotations"
    if not (ann / "list.txt").is_file():
        raise SystemExit(f"Oxford-IIIT Pet subset not found at '{source}'")

    splits = {split: read_rows(ann / f"{split}.txt") for split in PER_BREED}
    chosen = {split: pick(rows, PER_BREED[split]) for split, rows in splits.items()}
    keep = chosen["trainval"] | chosen["test"]

    for sub in ("images", "annotations"):  # LICENSE.txt stays, in case no copy of the legal code is found
        shutil.rmtree(dest / sub, ignore_errors=True)
    for sub in ("images", "annotations/trimaps", "annotations/xmls"):
        (dest / sub).mkdir(parents=True)
    for name in sorted(keep, key=natural_key):
        convert(source, dest, name)
    for split, rows in splits.items():
        kept = [row for row in rows if row.split()[0] in chosen[split]]
        (dest / "annotations" / f"{split}.txt").write_text("\n".join(kept) + "\n")
    listed = [row for row in read_rows(ann / "list.txt") if row.split()[0] in keep]
    (dest / "annotations" / "list.txt").write_text("\n".join(listed) + "\n")
    if (ann / "README").is_file():
        shutil.copyfile(ann / "README", dest / "annotations" / "README")

    legal = next((p for p in CC_BY_SA_TEXT if p.is_file()), None)
    if legal is not None:
        (dest / "LICENSE.txt").write_text(NOTICE + "\n" + "=" * 71 + "\n\n" + legal.read_text())
    elif not (dest / "LICENSE.txt").is_file():
        (dest / "LICENSE.txt").write_text(NOTICE)
    (dest / "ATTRIBUTION").write_text(
        ATTRIBUTION.format(
            n_trainval=len(chosen["trainval"]),
            n_test=len(chosen["test"]),
            long_side=LONG_SIDE,
            quality=JPEG_QUALITY,
        )
    )
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"wrote {len(keep)} images to {dest} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
