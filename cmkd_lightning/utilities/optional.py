"""Optional dependencies: import them where they are used, and say which extra installs them when they are missing.

The extras are declared in ``pyproject.toml``: ``wandb`` (the W&B logger the example configs use), ``figures``
(matplotlib for the heatmap and t-SNE figures, scikit-learn's ``TSNE``), ``quickstart`` (the offline digits task,
``cmkd-quickstart`` and ``cmkd-compare``), ``torchsort`` and ``sweep``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from cmkd_lightning.errors import CMKDError

# The distribution to install when the import name differs from it.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "Pillow", "yaml": "PyYAML"}


class MissingExtraError(CMKDError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def available(module: str) -> bool:
    """Whether ``module`` (a top-level import name such as ``"wandb"``) can be imported, without importing it.

    Example:
        >>> available("torch"), available("surely_not_an_installed_module")
        (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module is a stand-in without a spec
        return False


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the pip extra installing it.

    Args:
        module: the module to import, e.g. ``"wandb"`` or ``"sklearn.manifold"``.
        extra: the ``cmkd-lightning`` extra that installs it, e.g. ``"wandb"``.
        purpose: what needs it, for the message, e.g. ``"EmbeddingProjection (t-SNE)"``.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: (an ImportError) when ``module`` or one of its own imports is missing.

    Example:
        >>> require("math", extra="figures", purpose="an example").sqrt(4.0)
        2.0
        >>> try:
        ...     require("surely_not_installed", extra="figures", purpose="An example")
        ... except ImportError as err:
        ...     print(err)
        An example needs `surely_not_installed`, which is not installed: pip install 'cmkd-lightning[figures]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        name = (err.name or module).split(".")[0]
        package = _DISTRIBUTIONS.get(name, name)
        raise MissingExtraError(
            f"{purpose} needs `{package}`, which is not installed: pip install 'cmkd-lightning[{extra}]'"
        ) from err
