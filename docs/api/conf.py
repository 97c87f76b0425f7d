"""Sphinx configuration of the API reference (``make docs``)."""

import sys
from pathlib import Path

# The checkout's package, not an installed copy: the reference documents
# the docstrings of the tree it is built from.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import rda_optax  # noqa: E402  pylint: disable=wrong-import-position

project = "rda-optax"
release = version = rda_optax.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    # MathJax renders in the reader's browser: the build needs no LaTeX and
    # no network.
    "sphinx.ext.mathjax",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types only where the docstring describes the argument: a state's fields
# are described under Attributes, not again as constructor parameters.
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
# Unexpanded, optax.ScalarOrSchedule is a union of seven array types per
# argument; the Args sections say what each argument takes.
autodoc_type_aliases = {
    "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
    "MaskOrFn": "MaskOrFn",
    "GroupsOrFn": "GroupsOrFn",
    "DTypeLike": "DTypeLike",
}
html_theme = "alabaster"
html_title = "rda-optax API reference"
exclude_patterns = ["_build"]
