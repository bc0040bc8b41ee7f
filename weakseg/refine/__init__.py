"""Refinement: turn a soft class-activation map into a binary pseudo-mask with a pipeline of named steps.

    from weakseg.refine import parse_pipeline, refine_many
    pipeline = parse_pipeline("smooth:sigma=2 | otsu | grabcut:iters=5 | lcc")
    mask = pipeline(image_rgb_uint8, soft_float_0_1)          # uint8 0/1
    masks = refine_many(pipeline, images, softs, workers=4)   # worker processes, order kept

Steps: threshold, otsu, smooth, open, close, dilate, erode, morph, fill, lcc, grabcut, crf (``list_ops()``).
No torch import here: worker processes start fast.
"""

from __future__ import annotations

from weakseg.refine.ops import (
    RefineOp,
    RefineState,
    class_probabilities,
    crf_foreground_prob,
    get_op,
    list_ops,
    make_op,
    register_op,
)
from weakseg.refine.parallel import Refiner, bench_refine, refine_many
from weakseg.refine.pipeline import RefinePipeline, parse_pipeline, parse_step

__all__ = [
    "RefineOp",
    "RefinePipeline",
    "RefineState",
    "Refiner",
    "bench_refine",
    "class_probabilities",
    "crf_foreground_prob",
    "get_op",
    "list_ops",
    "make_op",
    "parse_pipeline",
    "parse_step",
    "refine_many",
    "register_op",
]
