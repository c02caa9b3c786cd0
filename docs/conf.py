"""Sphinx configuration for the Flask-LongTask docs.

Build (warnings are errors, as in the test suite)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

# Import the packages from this checkout, installed or not.
sys.path.insert(0, os.path.abspath(".."))

import flask_longtask

project = "Flask-LongTask"
copyright = "Flask-LongTask contributors"
author = "Flask-LongTask contributors"
release = flask_longtask.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "pallets_sphinx_themes",
]

# The Markdown pages are MyST; the API reference is autodoc over our reST docstrings.
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # "#some-heading" links work for h1-h3
myst_enable_extensions = ["colon_fence"]

# Autodoc: members in source order, signatures with types, type hints shown in the signature.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Members are listed per directive in api.md: a backend's inherited primitives are documented once,
# on Backend.
autodoc_default_options: dict[str, object] = {}
# Type hints name classes autodoc cannot always link (TypeVars, ParamSpec, third-party types
# without intersphinx: this machine has no internet). Unresolved references are not warnings
# unless nitpicky is on, and it stays off for that reason.
nitpicky = False

html_theme = "flask"
html_title = f"Flask-LongTask {release}"
html_static_path: list[str] = []
html_context = {"project_links": []}
html_show_sourcelink = False
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
# The version banner fetches the project's versions from Read the Docs: nothing to fetch here.
version_banner = False
