"""Training recipes, registered by name (``method:`` in configs)."""

from weakseg.methods import multisource, selftrain, tags  # noqa: F401  (fill the registry)
