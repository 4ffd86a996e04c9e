"""The local model store (`$MLXEDGE_HOME`, default ~/.mlxedge): names -> content-addressed bundles.

    from mlxedge import store
    store.pull("tests/fixtures/gguf/llama-q4_0.gguf", name="tiny:q4")
    store.list_models(); store.show("tiny:q4"); store.cp("tiny:q4", "tiny:copy")
    store.create("tiny:terse", 'FROM tiny:q4\\nPARAMETER temperature 0\\nSYSTEM "Be terse."')
    store.verify(); store.rm("tiny:copy"); store.audit.read()

Layout and crash handling: layout.py; `.gguf` paths converted under no name: cache.py; the Modelfile
subset: modelfile.py; docs/store.md.
"""

from __future__ import annotations

from . import audit, catalogue, layout, modelfile, names
from .layout import home
from .lookup import get, materialize, resolve, settings  # first: modelcache imports it, pull imports modelcache
from . import cache  # before models: modelcache imports it too
from .models import apply_settings, cp, create, default_model, list_models, rm, show, show_modelfile, verify
from .importer import pull

__all__ = ["apply_settings", "audit", "cache", "catalogue", "cp", "create", "default_model", "get", "home", "layout",
           "list_models", "materialize", "modelfile", "names", "pull", "resolve", "rm", "settings", "show",
           "show_modelfile", "verify"]
