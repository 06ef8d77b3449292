"""Sphinx configuration of the ppl-mixtures documentation (API reference from the docstrings).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (CI builds it with
warnings as errors, so a broken cross-reference or a malformed docstring section fails).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from ppl_mixtures import __version__  # noqa: E402

project = "ppl-mixtures"
author = "the ppl-mixtures developers"
copyright = "2026, the ppl-mixtures developers"  # noqa: A001
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "*.csv", "*.png"]

# The reference documents what users call: members that are documented, in source order.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Markdown pages of the repository (README-style headings, tables, code fences).
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header"]

html_theme = "alabaster"
html_title = f"ppl-mixtures {__version__}"


def _skip_metadata_requests(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated ``set_*_request`` methods (metadata routing)."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
