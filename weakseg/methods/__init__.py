"""Training recipes, registered by name (``method:`` in configs)."""

from weakseg.methods import supervised  # noqa: F401
from weakseg.methods import tags  # noqa: F401
