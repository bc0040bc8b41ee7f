"""Training recipes, registered by name (``method:`` in configs)."""

from weakseg.methods import supervised, tags  # noqa: F401  (fill the registry)
