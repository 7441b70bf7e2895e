"""The rocket menu's "Launch on Colab" opens the chapter's Colab edition.

sphinx-book-theme builds that link from `repository.branch` (the branch the install cells
name); the editions live on their own branch (companion.run.colab.EDITION_BRANCH, published
by the Pages workflow from tools/colab_edition.py), at the same paths. So the theme's branch
becomes the edition's, for the launch buttons only: the install cells keep theirs.
"""

import importlib.util
from pathlib import Path

COLAB = Path(__file__).resolve().parents[2] / "companion" / "run" / "colab.py"


def edition_branch() -> str:
    # by its file: the Pages workflow builds the book without torch, which `companion` imports
    spec = importlib.util.spec_from_file_location("_book_colab", COLAB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EDITION_BRANCH


def launch_on_the_edition(app, config):
    config.html_theme_options["repository_branch"] = edition_branch()


def setup(app):
    app.connect("config-inited", launch_on_the_edition)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
