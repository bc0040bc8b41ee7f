"""weakseg: from cheap labels (tags, boxes, points, a few masks) to pixel masks, measured honestly."""

__version__ = "0.1.0"
