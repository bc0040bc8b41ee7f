"""Label Studio pre-annotations: tasks with ``brushlabels`` predictions in Label Studio's brush RLE.

The brush RLE is the rle-pack bit stream Label Studio's editor reads (label-studio-converter ``brush.py``): the
mask as an RGBA image (every channel 255 inside, 0 outside) flattened row by row, then a header of 32 bits (value
count), 5 bits (word size - 1 = 7) and four 4-bit run-size widths - 1 (3, 4, 8, 16 bits), then per run a flag bit
(1 = a repeated value), 2 bits choosing the width, the run length - 1 in that width and the 8-bit value; zero bits
pad the stream to whole bytes, written as a list of byte values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from weakseg.export.base import PALETTE, LabelSet, MaskItem, present_classes, register_exporter
from weakseg.io import read_mask, write_text

WORD_BITS = 8
RUN_BITS = (3, 4, 8, 16)
MAX_RUN = 1 << RUN_BITS[-1]


def _run_bits(length: int, value: int) -> str:
    """Bits of one run (length <= MAX_RUN) of ``value``."""
    if length == 1:  # a literal block of one value
        return f"000{0:0{RUN_BITS[0]}b}{value:0{WORD_BITS}b}"
    index = next(i for i, bits in enumerate(RUN_BITS) if length - 1 < 1 << bits)
    return f"1{index:02b}{length - 1:0{RUN_BITS[index]}b}{value:0{WORD_BITS}b}"


def brush_rle(region: np.ndarray) -> list[int]:
    """Label Studio brush RLE (list of byte values) of a boolean (H, W) region."""
    flat = region.ravel().astype(np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4  # 4 channels per pixel, all the same value
    values = flat[starts] * 255
    bits = [f"{flat.size * 4:032b}", f"{WORD_BITS - 1:05b}", *(f"{b - 1:04b}" for b in RUN_BITS)]
    for length, value in zip(lengths.tolist(), values.tolist(), strict=True):
        while length > 0:
            chunk = min(length, MAX_RUN)
            bits.append(_run_bits(chunk, value))
            length -= chunk
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def prediction_score(labels: LabelSet, item: MaskItem, shape: tuple[int, int]) -> float | None:
    """Mean certainty max(p, 1 - p) of the soft map pseudo-label wrote beside the masks (soft/<name>.png), if any."""
    soft_path = labels.mask_dir.parent / "soft" / f"{item.name}.png"
    if not soft_path.is_file():
        return None
    soft = read_mask(soft_path).astype(np.float32) / 255
    if soft.shape != shape:
        return None
    return round(float(np.maximum(soft, 1 - soft).mean()), 4)


def result_id(name: str, class_id: int) -> str:
    """A stable region id (Label Studio needs one per result)."""
    return hashlib.sha1(f"{name}/{class_id}".encode()).hexdigest()[:10]


def label_config(classes: list[str], from_name: str, to_name: str) -> str:
    """A labeling interface matching the tasks (Settings > Labeling Interface > Code)."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(PALETTE[i % len(PALETTE)])}/>"
        for i, name in enumerate(classes)
    )
    return (
        "<View>\n"
        f'  <Image name={quoteattr(to_name)} value="$image" zoom="true"/>\n'
        f"  <BrushLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n{labels}\n  </BrushLabels>\n"
        "</View>\n"
    )


@register_exporter("labelstudio")
def export_labelstudio(
    labels: LabelSet, out: Path, image_root: str = "", from_name: str = "tag", to_name: str = "image"
) -> Path:
    """Label Studio tasks.json (brushlabels pre-annotations, brush RLE) and label_config.xml; each task's image is
    image_root + file name."""
    tasks = []
    for item, class_map in labels:
        height, width = class_map.shape
        results = [
            {
                "id": result_id(item.name, class_id),
                "from_name": from_name,
                "to_name": to_name,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": brush_rle(class_map == class_id),
                    "brushlabels": [labels.class_name(class_id)],
                },
            }
            for class_id in present_classes(class_map)
        ]
        prediction: dict = {"model_version": "weakseg", "result": results}
        score = prediction_score(labels, item, class_map.shape)
        if score is not None:
            prediction["score"] = score
        tasks.append({"data": {"image": f"{image_root}{item.file_name}"}, "predictions": [prediction]})
    write_text(out / "label_config.xml", label_config(labels.classes, from_name, to_name))
    path = out / "tasks.json"
    write_text(path, json.dumps(tasks, separators=(",", ":")) + "\n")  # compact: RLE lists are long
    return path
