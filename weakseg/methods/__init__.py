"""Training recipes, registered by name (``method:`` in configs)."""

from weakseg.methods import ccam, multisource, selftrain, tags, vit  # noqa: F401  (fill the registry)
