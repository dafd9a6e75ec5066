"""Plugins: the hooks (hookspecs.py), finding them through entry points (loading.py) and
what they register (registry.py). portaft's own backends, templates and formats are
plugins like any other."""

from .hookspecs import hookimpl
from .loading import PluginInfo
from .registry import Format, Plugins, TrainingCallback, get_backend, get_plugins, load_recipe, reset_plugins

__all__ = ["Format", "PluginInfo", "Plugins", "TrainingCallback", "get_backend", "get_plugins", "hookimpl",
           "load_recipe", "reset_plugins"]
