"""Export masks to the formats annotation tools import: COCO (RLE), YOLO-seg polygons, Label Studio brush
pre-annotations and CVAT 1.1 XML (``weakseg export-labels``)."""

from weakseg.export import coco, cvat, labelstudio, yolo  # noqa: F401  (fill the registry)
from weakseg.export.base import (
    LabelSet,
    MaskItem,
    collect_masks,
    describe_exporter,
    export_labels,
    get_exporter,
    list_exporters,
    register_exporter,
)

__all__ = [
    "LabelSet",
    "MaskItem",
    "collect_masks",
    "describe_exporter",
    "export_labels",
    "get_exporter",
    "list_exporters",
    "register_exporter",
]
