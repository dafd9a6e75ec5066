"""The recipe: what to fine-tune, on what data, how (schema.py), read and checked at once
(load.py) with `a.b=c` overrides (overrides.py); YAML with the line of every key (yamlpaths.py)."""

from .load import Names, RecipeSource, dump_recipe, read_recipe
from .schema import ChatTurn, DataSource, LoraSection, ModelSection, QuantizationSection, Recipe

__all__ = ["ChatTurn", "DataSource", "LoraSection", "ModelSection", "Names", "QuantizationSection", "Recipe",
           "RecipeSource", "dump_recipe", "read_recipe"]
