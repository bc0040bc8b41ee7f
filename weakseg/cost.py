"""Annotation cost: seconds of human time per label, and what the labels a run consumed cost.

The defaults come from published annotation-time studies (docs/cost.md has the table with its sources and the
pricing rules); every price can be overridden from a YAML/JSON file or ``KIND=SECONDS`` options.

Pricing rules for the label counts of ``results.json`` (``labels: {masks, boxes, points, tags}``):

* ``masks`` (images with a full mask): ``mask`` seconds each.
* ``boxes`` (boxes): ``box`` seconds each. A ``sam`` source consumes boxes, so SAM masks prompted with boxes cost
  box time; ``sam_mask`` is the price of a mask an annotator draws *with* SAM's help (``sam_masks``), which no
  published row consumes yet.
* ``points`` (labelled pixels): ``point`` seconds each (one click per labelled pixel), but never more per image
  than drawing the image's full mask: at most ``mask`` seconds times the images that have points. Clicks per
  object are priced per click; a dense point density reaches the cap and is priced as full masks.
* ``tags`` (images whose tags were used): ``tag`` seconds each (one class decision per image).
* ``polygons`` (outlined objects): ``polygon`` seconds each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from weakseg.errors import ConfigError, DataFileError

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class CostModel:
    """Seconds of annotation time per label of each kind."""

    tag: float = 1.0
    """One image-level class decision (is class c present?): 1 s per class, Bearman et al., ECCV 2016 (20 s per
    PASCAL VOC image for its 20 classes)."""
    point: float = 2.4
    """One click on an object: 2.4 s per point, Bearman et al., ECCV 2016 (22.1 s per VOC image with one point
    per present class, against 239.7 s for a full mask)."""
    box: float = 7.0
    """One tight box by extreme clicking: 7 s, Papadopoulos et al., ICCV 2017 (drawn the usual way: about 35 s,
    the ILSVRC figure of Su et al., 2012; override with ``box=35``)."""
    polygon: float = 79.2
    """One object outlined with a polygon: 79.2 s (22 worker hours per 1,000 instances), Lin et al., Microsoft
    COCO, ECCV 2014."""
    mask: float = 239.7
    """A full mask of one image: 239.7 s per PASCAL VOC image, Bearman et al., ECCV 2016 (class questions plus
    about 2.8 objects at COCO's polygon time; ``mask=79.2`` prices a one-object image as one polygon)."""
    sam_mask: float = 14.0
    """One mask drawn with SAM's help (clicks, brush and eraser on a SAM prediction): 14 s, Kirillov et al.,
    Segment Anything, ICCV 2023 (the assisted-manual stage, down from 34 s)."""

    def with_overrides(self, overrides: Mapping[str, Any]) -> CostModel:
        """A copy with some prices replaced ({kind: seconds}; ``click`` is ``point``)."""
        names = {f.name for f in fields(self)}
        values: dict[str, float] = {}
        for key, value in overrides.items():
            name = COST_ALIASES.get(str(key).strip(), str(key).strip())
            if name not in names:
                raise ConfigError(f"unknown annotation cost '{key}'; known: {', '.join(sorted(names | {'click'}))}")
            values[name] = _seconds(key, value)
        return replace(self, **values)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_COSTS = CostModel()
"""The published defaults (docs/cost.md)."""

COST_ALIASES = {"click": "point", "points": "point", "boxes": "box", "tags": "tag", "masks": "mask"}

LABEL_PRICES = {
    "masks": "mask",
    "boxes": "box",
    "points": "point",
    "tags": "tag",
    "polygons": "polygon",
    "sam_masks": "sam_mask",
}
"""The price (a ``CostModel`` field) of each label kind counted in ``results.json``."""


def _seconds(key: Any, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"annotation cost '{key}' must be a number of seconds, not '{value}'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"annotation cost '{key}' must be a finite number of seconds >= 0, not '{value}'")
    return seconds


def parse_cost_options(options: list[str] | None) -> dict[str, float]:
    """``["box=35", "mask=79.2"]`` -> {kind: seconds}."""
    out: dict[str, float] = {}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--cost takes KIND=SECONDS (e.g. box=35), not '{option}'")
        out[key.strip()] = _seconds(key.strip(), value.strip())
    return out


def load_cost_file(path: str | Path) -> dict[str, Any]:
    """{kind: seconds} from a YAML or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "cost file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json's ValueError, yaml.YAMLError
        raise DataFileError(path, f"cost file unreadable ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise DataFileError(path, "cost file must map label kinds to seconds (e.g. box: 35)")
    return data


def cost_model(file: str | Path | None = None, options: list[str] | None = None) -> CostModel:
    """The defaults, overridden by a cost file, then by ``KIND=SECONDS`` options."""
    model = DEFAULT_COSTS
    if file is not None:
        model = model.with_overrides(load_cost_file(file))
    return model.with_overrides(parse_cost_options(options))


def _count(labels: Mapping[str, Any], kind: str) -> int:
    value = labels.get(kind, 0) or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"label count '{kind}' must be a number >= 0, not '{value}'")
    return int(value)


def cost_breakdown(labels: Mapping[str, Any], model: CostModel = DEFAULT_COSTS) -> dict[str, float]:
    """Seconds per label kind for the labels a row consumed (the ``labels`` of a ``results.json`` row)."""
    unknown = sorted(k for k, v in labels.items() if k not in LABEL_PRICES and not isinstance(v, Mapping))
    if unknown:
        raise ConfigError(
            f"no annotation cost for label kind(s) {', '.join(unknown)}; priced: {', '.join(LABEL_PRICES)}"
        )
    out: dict[str, float] = {}
    for kind, price in LABEL_PRICES.items():
        count = _count(labels, kind)
        if not count:
            continue
        seconds = count * getattr(model, price)
        if kind == "points":
            images = (labels.get("images") or {}).get("points")
            if images:  # never more than drawing those images' full masks
                seconds = min(seconds, int(images) * model.mask)
        out[kind] = seconds
    return out


def row_cost(labels: Mapping[str, Any], model: CostModel = DEFAULT_COSTS) -> float:
    """Seconds of annotation time for the labels a row consumed."""
    return float(sum(cost_breakdown(labels, model).values()))


def row_cost_hours(labels: Mapping[str, Any], model: CostModel = DEFAULT_COSTS) -> float:
    """Hours of annotation time for the labels a row consumed."""
    return row_cost(labels, model) / SECONDS_PER_HOUR
