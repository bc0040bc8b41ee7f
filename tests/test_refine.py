"""weakseg.refine: each op against an independent oracle (skimage, direct OpenCV / pydensecrf calls), IoU gains on
a realistic synthetic scene, pipeline parsing, and parallel == serial."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.filters import threshold_otsu
from skimage.measure import label

from weakseg.errors import ConfigError
from weakseg.refine import (
    RefinePipeline,
    Refiner,
    RefineState,
    bench_refine,
    list_ops,
    make_op,
    parse_pipeline,
    refine_many,
)


def make_scene(seed: int = 0, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, coarse CAM-like soft map, true mask): a textured gradient background with blotches, an
    elliptical object of another colour, and a soft map = object mask pooled to 6×8 and upsampled bilinearly +
    a distractor blob beside the object + noise, min-max normalised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([70 + 70 * xx / w, 110 + 40 * yy / h, 150 - 60 * xx / w], axis=-1)
    blotch = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 4)
    bg += 25 * blotch[..., None] / blotch.std() + rng.normal(0, 12, (h, w, 3))
    cy, cx = h * (0.5 + rng.uniform(-0.08, 0.08)), w * (0.42 + rng.uniform(-0.08, 0.08))
    ry, rx = h * rng.uniform(0.22, 0.3), w * rng.uniform(0.2, 0.28)
    obj = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    fg = np.array([150, 105, 80], np.float32) + rng.normal(0, 14, (h, w, 3))
    image = np.clip(np.where(obj[..., None], fg, bg), 0, 255).astype(np.uint8)
    coarse = cv2.resize(obj.astype(np.float32), (8, 6), interpolation=cv2.INTER_AREA)
    cam = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    by, bx = cy + ry * 0.9, cx + rx * 1.6
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * (0.1 * w) ** 2))
    soft = cam + 0.45 * blob + rng.normal(0, 0.06, (h, w))
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    return image, soft.astype(np.float32), obj.astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> None:
    assert mask.dtype == np.uint8 and mask.shape == shape
    assert set(np.unique(mask).tolist()) <= {0, 1}


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_scene(0)


def state_after(spec: str, image: np.ndarray, soft: np.ndarray) -> RefineState:
    return parse_pipeline(spec).run(image, soft)


# ---------------------------------------------------------------- binarisation


def test_otsu_matches_skimage(scene):
    image, soft, _ = scene
    state = state_after("otsu", image, soft)
    expected = threshold_otsu(soft)
    assert abs(state.threshold - expected) <= 1 / 255
    check_mask(state.mask, soft.shape)
    np.testing.assert_array_equal(state.mask, (soft >= state.threshold).astype(np.uint8))
    assert 0.05 < state.mask.mean() < 0.6


def test_threshold_positional_and_keyword(scene):
    image, soft, _ = scene
    assert parse_pipeline("threshold:0.4") == parse_pipeline("threshold:t=0.4")
    state = state_after("threshold:0.4", image, soft)
    assert state.threshold == 0.4
    np.testing.assert_array_equal(state.mask, (soft >= 0.4).astype(np.uint8))


def test_smooth_renormalises_and_keeps_mask(scene):
    image, soft, _ = scene
    smoothed = state_after("smooth:sigma=2", image, soft).soft
    assert smoothed.dtype == np.float32 and smoothed.min() == 0.0 and np.isclose(smoothed.max(), 1.0)
    assert np.abs(np.diff(smoothed, axis=1)).mean() < np.abs(np.diff(soft, axis=1)).mean() / 2
    before = state_after("threshold:0.5", image, soft)
    after = make_op("smooth")(before)
    assert after.mask is before.mask


# ---------------------------------------------------------------- mask ops


def two_blob_mask(scene) -> np.ndarray:
    image, soft, _ = scene
    mask = state_after("threshold:0.35", image, soft).mask.copy()
    mask[5:15, 110:124] = 1  # an extra separate component
    return mask


def test_lcc_matches_skimage_label(scene):
    mask = two_blob_mask(scene)
    labels = label(mask, connectivity=2)
    assert labels.max() >= 2
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    expected = (labels == largest).astype(np.uint8)
    out = make_op("lcc")(RefineState(image=None, soft=scene[1], mask=mask)).mask
    check_mask(out, mask.shape)
    np.testing.assert_array_equal(out, expected)
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(make_op("lcc")(RefineState(None, scene[1], empty)).mask, empty)


@pytest.mark.parametrize("name", ["open", "close", "dilate", "erode"])
def test_morphology_matches_cv2(scene, name):
    mask = two_blob_mask(scene)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    code = {"open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE}.get(name)
    if code is not None:
        expected = cv2.morphologyEx(mask, code, kernel, iterations=2)
    else:
        expected = getattr(cv2, name)(mask, kernel, iterations=2)
    state = RefineState(image=None, soft=scene[1], mask=mask)
    out = make_op(name, k=7, iters=2)(state).mask
    check_mask(out, mask.shape)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(make_op("morph", op=name, k=7, iters=2)(state).mask, expected)
    grows = name in ("close", "dilate")
    assert (out >= mask).all() if grows else (out <= mask).all()
    assert not np.array_equal(out, mask)


def test_fill_holes(scene):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:30, 5:30] = 1
    mask[12:20, 12:20] = 0
    out = make_op("fill")(RefineState(None, np.zeros((40, 40), np.float32), mask)).mask
    check_mask(out, mask.shape)
    assert out[12:20, 12:20].all() and out.sum() == 25 * 25


def test_mask_ops_need_a_mask():
    with pytest.raises(ConfigError, match="step 'open' needs a mask: put threshold or otsu before it"):
        parse_pipeline("open | otsu")
    with pytest.raises(ConfigError, match="'lcc' needs a mask"):
        make_op("lcc")(RefineState(None, np.zeros((4, 4), np.float32)))


# ---------------------------------------------------------------- grabcut and crf


def test_grabcut_matches_cv2_and_improves_iou(scene):
    image, soft, truth = scene
    otsu = state_after("otsu", image, soft)
    out = state_after("otsu | grabcut:iters=4,fg=0.8,bg=0.05", image, soft).mask
    init = np.full(soft.shape, cv2.GC_PR_BGD, np.uint8)
    init[otsu.mask == 1] = cv2.GC_PR_FGD
    init[(otsu.mask == 1) & (soft >= 0.8)] = cv2.GC_FGD
    init[soft <= 0.05] = cv2.GC_BGD
    assert (init == cv2.GC_FGD).any() and (init == cv2.GC_BGD).any()
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(image[:, :, ::-1].copy(), init, None, bgd, fgd, 4, cv2.GC_INIT_WITH_MASK)
    expected = ((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)).astype(np.uint8)
    check_mask(out, soft.shape)
    np.testing.assert_array_equal(out, expected)
    assert iou(out, truth) > iou(otsu.mask, truth) + 0.1
    assert iou(out, truth) > 0.95


def test_grabcut_without_mask_uses_threshold(scene):
    image, soft, _ = scene
    direct = state_after("grabcut:iters=2", image, soft).mask
    via_threshold = state_after("threshold:0.5 | grabcut:iters=2", image, soft).mask
    np.testing.assert_array_equal(direct, via_threshold)


def crf_oracle(image, soft, t, iters=5, sxy_g=3.0, compat_g=3.0, sxy_b=50.0, srgb=13.0, compat_b=10.0, conf=1.0):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    s = soft.astype(np.float64)
    p = np.empty_like(s)
    low = s < t
    p[low] = 0.5 * s[low] / t
    p[~low] = 0.5 + 0.5 * (s[~low] - t) / (1 - t)
    p = np.clip(p, 1e-5, 1 - 1e-5)
    p = p**conf / (p**conf + (1 - p) ** conf)
    p = np.clip(p, 1e-5, 1 - 1e-5)
    h, w = soft.shape
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(unary_from_softmax(np.stack([1 - p, p]).astype(np.float32)))
    d.addPairwiseGaussian(sxy=sxy_g, compat=compat_g)
    d.addPairwiseBilateral(sxy=sxy_b, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat_b)
    q = np.array(d.inference(iters)).reshape(2, h, w)
    return np.argmax(q, axis=0).astype(np.uint8)


def test_crf_matches_pydensecrf_and_improves_iou(scene):
    image, soft, truth = scene
    thresholded = state_after("threshold:0.5", image, soft).mask
    spec = "threshold:0.5 | crf:iters=4,sxy_gauss=2,compat_gauss=2,sxy_bilateral=40,srgb=10,compat_bilateral=8"
    spec += ",confidence=2"
    out = parse_pipeline(spec)(image, soft)
    expected = crf_oracle(image, soft, 0.5, 4, 2.0, 2.0, 40.0, 10.0, 8.0, 2.0)
    check_mask(out, soft.shape)
    np.testing.assert_array_equal(out, expected)
    default = parse_pipeline("threshold:0.5 | crf")(image, soft)
    np.testing.assert_array_equal(default, crf_oracle(image, soft, 0.5))
    assert iou(default, truth) > iou(thresholded, truth) + 0.05


def test_crf_depends_on_last_threshold(scene):
    image, soft, _ = scene
    otsu_t = state_after("otsu", image, soft).threshold
    assert abs(otsu_t - 0.5) > 0.02
    after_half = parse_pipeline("threshold:0.5 | crf")(image, soft)
    after_otsu = parse_pipeline("otsu | crf")(image, soft)
    np.testing.assert_array_equal(after_otsu, crf_oracle(image, soft, otsu_t))
    assert not np.array_equal(after_half, after_otsu)
    assert after_otsu.sum() > after_half.sum()  # otsu's threshold is lower: more foreground evidence


# ---------------------------------------------------------------- parsing


def test_parse_string_example():
    pipe = parse_pipeline(" smooth:sigma=2 | otsu |grabcut: iters = 5 | lcc ")
    assert [s.name for s in pipe.steps] == ["smooth", "otsu", "grabcut", "lcc"]
    assert pipe.steps[0].sigma == 2.0 and isinstance(pipe.steps[0].sigma, float)
    assert pipe.steps[2].iters == 5 and pipe.steps[2].fg == 0.8
    assert pipe.needs_image and pipe.is_cpu_heavy
    assert not parse_pipeline("otsu | open").needs_image


def test_parse_list_form_and_round_trip():
    from_list = parse_pipeline(["smooth:sigma=2", "otsu", {"grabcut": {"iters": 5}}, {"lcc": None}])
    assert from_list == parse_pipeline("smooth:sigma=2 | otsu | grabcut:iters=5 | lcc")
    assert parse_pipeline([{"threshold": 0.4}, {"dilate": [3, 2]}]) == parse_pipeline(
        "threshold:0.4 | dilate:k=3,iters=2"
    )
    for spec in [
        "smooth:sigma=2.5 | otsu | grabcut:iters=5 | lcc",
        "threshold:0.35 | morph:close,7 | fill | crf:confidence=1.5,srgb=20",
        "otsu | erode:k=3,iters=2 | dilate",
    ]:
        pipe = parse_pipeline(spec)
        assert parse_pipeline(str(pipe)) == pipe
        assert str(parse_pipeline(str(pipe))) == str(pipe)
    assert str(parse_pipeline("otsu")) == "otsu"
    for empty in (None, "", " none ", []):
        pipe = parse_pipeline(empty)
        assert pipe == RefinePipeline() and len(pipe) == 0 and str(pipe) == "none"


def test_empty_pipeline_thresholds_at_half(scene):
    image, soft, _ = scene
    np.testing.assert_array_equal(parse_pipeline(None)(image, soft), (soft >= 0.5).astype(np.uint8))
    np.testing.assert_array_equal(parse_pipeline("smooth")(None, soft), (state_after("smooth", None, soft).soft >= 0.5))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("otsu | grabcutt", "unknown refinement step 'grabcutt'; known steps: close, crf"),
        ("grabcut:iter=5", "step 'grabcut' has no parameter 'iter'; its parameters: iters, fg, bg, seed"),
        ("grabcut:iters=2.5", "step 'grabcut': parameter 'iters' expects an integer"),
        ("smooth:sigma=big", "step 'smooth': parameter 'sigma' expects a number"),
        ("threshold:1.5", "step 'threshold': t must be in"),
        ("threshold:0.2,0.3", "step 'threshold' takes at most 1 positional"),
        ("otsu | | lcc", "empty step"),
        ("morph:op=blur", "step 'morph': op must be one of open, close, dilate, erode"),
        ("grabcut:fg=0.1,bg=0.2", "need 0 <= bg < fg <= 1"),
    ],
)
def test_parse_errors(spec, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        parse_pipeline(spec)


def test_parse_bad_list_items():
    with pytest.raises(ConfigError, match="one key"):
        parse_pipeline([{"otsu": None, "lcc": None}])
    with pytest.raises(ConfigError, match="'crf' has no parameter 'sigma'"):
        parse_pipeline([{"crf": {"sigma": 3}}])
    assert "grabcut" in list_ops() and "crf" in list_ops()


def test_bad_inputs(scene):
    image, soft, _ = scene
    with pytest.raises(ConfigError, match="differ in size"):
        parse_pipeline("otsu | grabcut")(image[:50], soft)
    with pytest.raises(ConfigError, match="needs the RGB image"):
        parse_pipeline("crf")(None, soft)
    with pytest.raises(ConfigError, match="NaN"):
        parse_pipeline("otsu")(image, np.full(soft.shape, np.nan, np.float32))
    with pytest.raises(ConfigError, match="uint8"):
        parse_pipeline("grabcut")(image.astype(np.float32), soft)


# ---------------------------------------------------------------- edge cases


FULL = "smooth | otsu | open:k=3 | close:k=3 | fill | lcc | grabcut:iters=2 | lcc"


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("spec", [FULL, "otsu | crf:iters=2", "grabcut:iters=2", "threshold:0.5 | crf:iters=2"])
def test_constant_maps_do_not_crash(scene, spec, value):
    image = scene[0]
    soft = np.full(image.shape[:2], value, np.float32)
    mask = parse_pipeline(spec)(image, soft)
    check_mask(mask, soft.shape)
    if "crf" not in spec:  # grabcut cannot model a side with no pixels: the threshold decides
        assert mask.all() if value >= 0.5 else not mask.any()


def test_constant_map_otsu_threshold():
    state = state_after("otsu", None, np.full((10, 10), 0.7, np.float32))
    assert state.threshold == 0.5 and state.mask.all()


@pytest.mark.parametrize("spec", [FULL, "otsu | crf", "threshold | grabcut | dilate:k=9 | erode:k=9"])
def test_tiny_images(spec):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    soft = rng.random((8, 8)).astype(np.float32)
    check_mask(parse_pipeline(spec)(image, soft), (8, 8))
    one = parse_pipeline(spec)(image[:1, :1], soft[:1, :1])
    check_mask(one, (1, 1))


# ---------------------------------------------------------------- parallel


def test_refine_many_parallel_equals_serial():
    scenes = [make_scene(seed) for seed in range(12)]
    images, softs = [s[0] for s in scenes], [s[1] for s in scenes]
    spec = "smooth:sigma=1.5 | otsu | grabcut:iters=2 | lcc | crf:iters=2"
    serial = refine_many(spec, images, softs, workers=1)
    parallel = refine_many(parse_pipeline(spec), images, softs, workers=2, chunksize=4)
    assert len(serial) == len(parallel) == 12
    for i, (a, b) in enumerate(zip(serial, parallel, strict=True)):
        check_mask(a, softs[i].shape)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, parse_pipeline(spec)(images[i], softs[i]))
    with Refiner(spec, workers=2) as refiner:  # reusable pool, two batches, order kept
        assert all(np.array_equal(a, b) for a, b in zip(refiner.map(images[:5], softs[:5]), serial[:5], strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(refiner.map(images[5:], softs[5:]), serial[5:], strict=True))


def test_refine_many_edge_cases(scene):
    assert refine_many("otsu | grabcut", [], [], workers=2) == []
    assert refine_many("otsu", None, [scene[1]], workers=1)[0].shape == scene[1].shape
    with pytest.raises(ConfigError, match="2 images but 1 soft"):
        refine_many("otsu", [scene[0], scene[0]], [scene[1]], workers=1)
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        Refiner("otsu", workers=0)


def test_bench_refine_reports(scene):
    image, soft, _ = scene
    result = bench_refine("otsu | lcc", [image] * 3, [soft] * 3, workers=1)
    assert result["pipeline"] == "otsu | lcc" and result["images"] == 3 and result["identical"] is True
    assert result["serial_img_s"] > 0 and result["speedup"] > 0


# ---------------------------------------------------------------- several classes


def two_object_scene(seed: int = 3, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, (2, H, W) coarse CAM-like maps, true labels 0/1/2): two ellipses of different colours on a
    textured background; each map is its object pooled to 6×8, upsampled, plus noise, min-max normalised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([80 + 60 * xx / w, 120 + 30 * yy / h, 140 - 40 * xx / w], axis=-1) + rng.normal(0, 12, (h, w, 3))
    truth = np.zeros((h, w), np.uint8)
    maps = []
    for k, (cy, cx, colour) in enumerate([(0.45, 0.27, (170, 90, 70)), (0.55, 0.73, (60, 70, 170))], start=1):
        obj = ((yy - cy * h) / (0.25 * h)) ** 2 + ((xx - cx * w) / (0.17 * w)) ** 2 <= 1.0
        image = np.where(obj[..., None], np.array(colour, np.float32) + rng.normal(0, 12, (h, w, 3)), image)
        truth[obj] = k
        coarse = cv2.resize(cv2.resize(obj.astype(np.float32), (8, 6), interpolation=cv2.INTER_AREA), (w, h))
        soft = coarse + rng.normal(0, 0.06, (h, w))
        maps.append((soft - soft.min()) / (soft.max() - soft.min()))
    return np.clip(image, 0, 255).astype(np.uint8), np.stack(maps).astype(np.float32), truth


def test_class_probabilities_match_the_product_formula():
    from weakseg.refine import class_probabilities, crf_foreground_prob

    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (2, 5, 7)).astype(np.float32)
    out = class_probabilities(maps, 0.4, confidence=2.0)
    p1, p2 = (crf_foreground_prob(m, 0.4, 2.0) for m in maps)
    direct = np.stack([(1 - p1) * (1 - p2), p1 * (1 - p2), (1 - p1) * p2])
    np.testing.assert_allclose(out, direct / direct.sum(0), rtol=1e-9, atol=1e-12)
    one = class_probabilities(maps[:1], 0.4)
    p = crf_foreground_prob(maps[0], 0.4)
    np.testing.assert_allclose(one, np.stack([1 - p, p]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", ["otsu | crf", "smooth:sigma=2 | otsu | crf:iters=3 | lcc", "otsu | close | lcc"])
def test_label_map_of_one_map_is_the_pipeline(scene, spec):
    image, soft, _ = scene
    pipeline = parse_pipeline(spec)
    np.testing.assert_array_equal(pipeline.label_map(image, soft[None]), pipeline(image, soft))


def test_label_map_is_a_multi_label_crf_and_separates_two_classes():
    from pydensecrf import densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image, maps, truth = two_object_scene()
    labels = parse_pipeline("otsu | crf").label_map(image, maps)
    # oracle: a direct 3-label pydensecrf call on the independent-evidence unary, centred on Otsu's threshold of
    # the strongest map
    t = state_after("otsu", image, maps.max(0)).threshold
    p = np.clip(np.where(maps < t, 0.5 * maps / t, 0.5 + 0.5 * (maps - t) / (1 - t)), 1e-5, 1 - 1e-5)
    unary = np.stack([(1 - p[0]) * (1 - p[1]), p[0] * (1 - p[1]), (1 - p[0]) * p[1]])
    h, w = truth.shape
    d = dcrf.DenseCRF2D(w, h, 3)
    d.setUnaryEnergy(unary_from_softmax((unary / unary.sum(0)).astype(np.float32)))
    d.addPairwiseGaussian(sxy=3.0, compat=3.0)
    d.addPairwiseBilateral(sxy=50.0, srgb=13.0, rgbim=np.ascontiguousarray(image), compat=10.0)
    expected = np.array(d.inference(5)).reshape(3, h, w).argmax(0)
    np.testing.assert_array_equal(labels, expected)
    # and it is better than each class's map thresholded alone, class by class
    plain = parse_pipeline("otsu").label_map(None, maps)
    for k in (1, 2):
        assert iou(labels == k, truth == k) > max(0.8, iou(plain == k, truth == k) + 0.03)
