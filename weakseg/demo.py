"""The embedded default: a tiny Oxford-IIIT Pet sample shipped in the package, trained and scored offline."""

from __future__ import annotations

from pathlib import Path

from weakseg.config import RunConfig, load_run_config

DEMO_ROOT = Path(__file__).parent / "assets" / "demo" / "oxford-iiit-pet-mini"


def demo_config(epochs: int = 8, overrides: list[str] | None = None) -> RunConfig:
    """U-Net with the bundled EfficientNet-Lite0 encoder on the demo sample, 160 px."""
    return load_run_config(
        None,
        [
            "dataset.name=oxford_pet",
            f"dataset.root={DEMO_ROOT}",
            "dataset.size=160",
            "dataset.val_fraction=0.15",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "train.loss=ce+dice",
            *(overrides or []),
        ],
    )
