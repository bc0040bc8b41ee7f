"""The one registry mechanism, every kind ported onto it, and the package's import graph."""

from __future__ import annotations

import functools

import pytest

from tests.import_graph import find_cycles, import_graph
from weakseg.errors import ConfigError
from weakseg.registry import Registry


class Thing:
    pass


class Other:
    pass


def make_thing() -> Thing:
    return Thing()


# ---------------------------------------------------------------- the Registry class


def test_register_returns_the_object_and_get_finds_it():
    reg: Registry[type] = Registry("widget")
    assert reg.register("thing")(Thing) is Thing
    assert reg.add("other", Other) is Other
    assert reg.get("thing") is Thing and reg["other"] is Other
    assert "thing" in reg and "nothing" not in reg and 3 not in reg
    assert list(reg) == ["thing", "other"]  # registration order
    assert len(reg) == 2
    assert reg.items() == [("thing", Thing), ("other", Other)]


def test_unknown_name_is_a_config_error_listing_the_known_names():
    reg: Registry[type] = Registry("widget")
    reg.add("b", Other)
    reg.add("a", Thing)
    with pytest.raises(ConfigError, match=r"^unknown widget 'c'; known: a, b$"):
        reg.get("c")
    with pytest.raises(ConfigError, match="unknown widget 'c'"):
        reg.meta("c")


def test_names_are_sorted_and_filtered_by_a_shell_pattern():
    reg: Registry[type] = Registry("architecture")
    for name in ["unet", "fpn", "deeplabv3plus", "deeplabv3"]:
        reg.add(name, type(name, (), {}))
    assert reg.names() == ["deeplabv3", "deeplabv3plus", "fpn", "unet"]
    assert reg.names("deeplab*") == ["deeplabv3", "deeplabv3plus"]
    assert reg.names("*un*") == ["unet"]
    assert reg.names("*x*") == []
    assert reg.names(sort=False) == ["unet", "fpn", "deeplabv3plus", "deeplabv3"]


def test_metadata_aliases_and_normalized_lookup():
    reg: Registry[type] = Registry("method", normalize=str.lower)
    reg.register("thing", aliases=["t"], primary="masks")(Thing)
    reg.add("other", Other)
    assert reg.meta("thing") == {"primary": "masks"}
    assert reg.meta("other") == {}
    assert reg.get("T") is Thing and reg.get("THING") is Thing and "t" in reg
    assert reg.resolve("T") == "thing" and reg.resolve("x") is None
    assert reg.names() == ["other", "thing"]  # aliases are not listed
    reg.meta("thing")["primary"] = "boxes"  # a copy: the registry keeps its own
    assert reg.meta("thing") == {"primary": "masks"}


def test_a_taken_name_is_refused_for_another_object():
    reg: Registry = Registry("widget")
    reg.register("thing", aliases=["t"])(Thing)
    with pytest.raises(ValueError, match=r"widget 'thing' is already registered to .*Thing; cannot register .*Other"):
        reg.add("thing", Other)
    with pytest.raises(ValueError, match="widget 't' is already registered"):
        reg.add("other", Other, aliases=["t"])
    with pytest.raises(ValueError, match="already registered"):
        reg.add("t", Other)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("thing", lambda: None)
    assert reg.get("thing") is Thing and "other" not in reg


def test_registering_the_same_object_again_is_fine():
    reg: Registry = Registry("widget")
    reg.add("thing", Thing, aliases=["t"])
    reg.register("thing", aliases=["t"])(Thing)
    reg.add("maker", make_thing)
    reg.add("maker", make_thing)
    reg.add("partial", functools.partial(Thing))
    reg.add("partial", functools.partial(Thing))  # a reloaded module makes an equal partial
    assert reg.names() == ["maker", "partial", "thing"]


def test_a_reloaded_module_redefining_an_object_replaces_it():
    reg: Registry = Registry("widget")
    reg.add("thing", Thing)
    reloaded = type("Thing", (), {"__module__": Thing.__module__, "__qualname__": Thing.__qualname__})
    reg.add("thing", reloaded)
    assert reg.get("thing") is reloaded


# ---------------------------------------------------------------- every kind, with the built-in names it had


def test_datasets():
    from weakseg.data import build_dataset, list_datasets
    from weakseg.data.registry import DATASETS

    assert list_datasets() == DATASETS.names() == ["folder", "kvasir", "oxford_pet"]
    assert list_datasets("*pet") == ["oxford_pet"]
    assert DATASETS.get("kvasir").key == "kvasir"
    with pytest.raises(ConfigError, match="unknown dataset 'pets'; known: folder, kvasir, oxford_pet"):
        build_dataset("pets", ".", "train")


def test_models():
    from weakseg.models import build_model, list_models
    from weakseg.models.registry import MODELS

    assert list_models() == MODELS.names() == ["deeplabv3", "deeplabv3plus", "fpn", "unet"]
    assert list_models("deeplab*") == ["deeplabv3", "deeplabv3plus"]
    assert list_models("*unet*") == ["unet"]
    with pytest.raises(ConfigError, match="unknown architecture 'segformer'; known: deeplabv3, "):
        build_model("segformer", weights=None)


def test_cams_keep_their_order_and_spellings():
    from weakseg.cams import CAM_METHODS, GradCAMPlusPlus, list_cams

    names = ["cam", "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "fullgrad"]
    assert list_cams() == list(CAM_METHODS) == names
    assert list_cams("grad*") == ["gradcam", "gradcam++"]
    assert CAM_METHODS.get("Grad-CAM++") is GradCAMPlusPlus is CAM_METHODS.get("gradcampp")
    with pytest.raises(ConfigError, match="unknown CAM method 'scorecam'"):
        CAM_METHODS.get("scorecam")


def test_refinement_steps():
    from weakseg.refine import get_op, list_ops
    from weakseg.refine.ops import OPS

    first = ["close", "crf", "dilate", "erode", "fill", "grabcut"]
    assert list_ops() == OPS.names() == [*first, "lcc", "morph", "open", "otsu", "smooth", "threshold"]
    assert get_op(" OTSU ") is OPS.get("otsu") and get_op("otsu").name == "otsu"
    with pytest.raises(ConfigError, match="unknown refinement step 'otsuu'; known steps: close, crf"):
        get_op("otsuu")


def test_mask_generators():
    from weakseg.sources.sam import GENERATORS, BoxMaskGenerator, build_mask_generator, list_mask_generators

    assert (
        list_mask_generators()
        == GENERATORS.names()
        == [*("box", "grabcut", "litemedsam", "sam_vit_b", "sam_vit_h", "sam_vit_l")]
    )
    assert list_mask_generators("sam_*") == ["sam_vit_b", "sam_vit_h", "sam_vit_l"]
    assert isinstance(build_mask_generator("box", shrink=0.1), BoxMaskGenerator)
    with pytest.raises(ConfigError, match="unknown mask generator 'sam_vit_x'; known: box, grabcut, litemedsam"):
        build_mask_generator("sam_vit_x")


def test_sources_live_with_the_sources():
    import weakseg.methods  # noqa: F401  (defines the built-in sources)
    from weakseg.methods import multisource
    from weakseg.sources.registry import SOURCES, list_sources, source_labels

    assert list_sources() == multisource.list_sources() == ["boxes", "cam", "masks", "points", "sam"]
    labels = {name: source_labels(name) for name in SOURCES}
    assert labels == {"masks": "masks", "points": "points", "boxes": "boxes", "sam": "boxes", "cam": "tags"}
    assert SOURCES.get("boxes") is multisource.boxes_source


def test_methods():
    from weakseg.methods.base import METHODS, list_methods
    from weakseg.pipeline import list_methods as pipeline_list_methods

    cams = ["cam", "fullgrad", "gradcam", "gradcam++", "hirescam", "layercam", "xgradcam"]
    expected = sorted(["boxes", "ccam", "full", "masks", "multi", "points", "sam", "selftrain", "vit", *cams])
    assert list_methods() == pipeline_list_methods() == METHODS.names() == expected
    assert list_methods("grad*") == ["gradcam", "gradcam++"]
    assert all(callable(METHODS.meta(name)["primary"]) for name in METHODS)


def test_list_commands_take_a_pattern():
    from typer.testing import CliRunner

    from weakseg.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["list", "models", "*unet*"])
    assert result.exit_code == 0 and result.output.split() == ["unet"]
    for kind, pattern, expected in [
        ("datasets", "k*", ["kvasir"]),
        ("cams", "*++", ["gradcam++"]),
        ("generators", "sam_vit_[bh]", ["sam_vit_b", "sam_vit_h"]),
        ("sources", "*s", ["boxes", "masks", "points"]),
        ("methods", "s*", ["sam", "selftrain"]),
    ]:
        result = runner.invoke(app, ["list", kind, pattern])
        assert result.exit_code == 0 and result.output.split() == expected, (kind, result.output)
    result = runner.invoke(app, ["list", "refine", "o*"])
    assert result.exit_code == 0 and [line.split(":")[0] for line in result.output.splitlines()] == ["open", "otsu"]


# ---------------------------------------------------------------- no import cycles


def test_no_import_cycle_among_module_level_imports():
    graph = import_graph()
    assert "weakseg.methods.base" in graph["weakseg.pipeline"]
    assert "weakseg.pipeline" not in graph["weakseg.methods.multisource"]
    assert find_cycles(graph) == []


def test_methods_never_import_the_pipeline_even_lazily():
    graph = import_graph(lazy=True)
    assert not [m for m in graph if m.startswith("weakseg.methods") and "weakseg.pipeline" in graph[m]]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["d"]]
