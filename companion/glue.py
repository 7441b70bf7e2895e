"""Numbers from a cell into the prose: the book's `{glue:text}` role reads what this stores.

    from companion.glue import glue
    glue("ch9_fd_full", fd, display=False)     # prose: {glue:text}`ch9_fd_full:.1f`

The output is the one myst-nb's own `glue` writes (its mime bundle under the papermill
prefix, the name in the output's "scrapbook" metadata), made here so that a notebook runs
where myst-nb and its Sphinx stack are not installed (Colab, a bare GPU machine).
"""

from __future__ import annotations

from typing import Any

GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Store `variable`'s displayed form under `name` for the book's glue roles.

    display: also show it in the notebook (False: stored only, shown nowhere).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue needs a non-empty name (str), got {name!r}")
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    bundle, metadata = format_display_data(variable)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
