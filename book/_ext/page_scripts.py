"""Each page script once (issue 64: a clean console).

Every page carried sphinx-thebe's inline configuration (`const THEBE_JS_URL = ...`) and
sphinx-togglebutton's twice: the copy the extension gave the HTML builder has no file name
(None) and the copy the builder takes from Sphinx's registry has '' in its place, so Sphinx
keeps both as different scripts. The second `const` threw "Identifier 'THEBE_JS_URL' has
already been declared" on every page. Here the page keeps the first of scripts with the
same file (None and '' alike), body, priority and attributes.
"""


def _key(js) -> tuple:
    filename = getattr(js, "filename", js) or ""
    attributes = getattr(js, "attributes", {})
    return str(filename), getattr(js, "priority", 500), tuple(sorted(attributes.items()))


def unique_scripts(app, pagename, templatename, context, doctree):
    """context["script_files"] with later copies of the same script left out."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        if _key(js) not in seen:
            seen.add(_key(js))
            kept.append(js)
    scripts[:] = kept  # in place: it is the builder's list, restored for the next page


def setup(app):
    # late, after every extension that adds a script to this page
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
