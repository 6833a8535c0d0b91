"""Sphinx configuration for the API documentation (``make docs``)."""

# The packages are imported from the editable install of this checkout (`make docs` installs it).

project = "mnist-diffusion"
author = "mnist-diffusion contributors"
copyright = "mnist-diffusion contributors, MIT License"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Google-style docstrings (Args:, Returns:, Raises:, Attributes:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
# Only this project's docstrings: no text inherited from torch or Diffusers base classes.
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"

exclude_patterns = ["_build"]
html_theme = "alabaster"
