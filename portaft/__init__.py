"""portaft: one fine-tuning recipe, any accelerator.

    import portaft
    result = portaft.run("examples/self_identity.yaml", backend="cpu")

Plugins import one name: ``from portaft import hookimpl``.
"""

from . import data  # `portaft.data.load(...)` after a plain `import portaft`
from .errors import BackendUnavailable, RecipeError, UserError
from .plugins import get_backend, hookimpl, load_recipe
from .recipe import Recipe
from .runner import RunResult, run

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "Recipe",
    "RecipeError",
    "RunResult",
    "UserError",
    "data",
    "get_backend",
    "hookimpl",
    "load_recipe",
    "run",
]
