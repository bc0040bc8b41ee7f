"""Training recipes, registered by name (``method:`` in configs)."""

from weakseg.methods import multisource, tags  # noqa: F401  (fill the registry)
