"""Each row of an evidence table a link target (issue 94): `[phrase](#ch18_fd_words)`.

A chapter's evidence table (companion.compare.Evidence) is a Markdown output whose rows
begin with an HTML anchor per glued phrase, `<a id="ch18_fd_words" name=...></a>`: Jupyter
and Colab land a link there as it is, but to Sphinx an inline HTML tag is raw text and no
target, so a link to it would be unresolved (an error under -n -W) and the PDF would lose
it. Before MyST resolves `#` links (its ResolveAnchorIds, priority 879) this turns each
such tag into an empty target node that carries the name as an explicit target: the HTML
page gets an element with that id, the PDF a label, and the link resolves on both.
"""

from __future__ import annotations

import re

from docutils import nodes
from docutils.transforms import Transform

OPEN = re.compile(r'\s*<a id="(?P<name>[A-Za-z][\w-]*)"(?: name="(?P=name)")?>\s*'
                  r'(?P<close></a>)?\s*')
CLOSE = re.compile(r"\s*</a>\s*")


class EvidenceAnchors(Transform):
    default_priority = 870  # before myst_parser's ResolveAnchorIds (879)

    def apply(self, **kwargs) -> None:
        made: set[str] = set()
        for raw in list(self.document.findall(nodes.raw)):
            if "html" not in raw.get("format", "").split():
                continue
            m = OPEN.fullmatch(raw.astext())
            if not m or raw.parent is None:
                continue
            parent = raw.parent
            after = parent.index(raw) + 1
            if not m["close"]:
                if after >= len(parent) or not isinstance(parent[after], nodes.raw) \
                        or not CLOSE.fullmatch(parent[after].astext()):
                    continue  # not the empty anchor the tables write
                parent.remove(parent[after])
            target = nodes.target()
            target["names"].append(nodes.fully_normalize_name(m["name"]))
            self.document.note_explicit_target(target, target)
            parent.replace(raw, target)
            made.add(target["names"][0])
        # Sphinx keeps names in lower case and MyST looks a link up as it is written, so
        # `#ch18_fd_VDM_simple` (Jupyter's spelling, case and all) would miss its row
        for ref in self.document.findall(nodes.reference):
            name = ref.get("refuri", "")[1:]
            if ref.get("id_link") and nodes.fully_normalize_name(name) in made:
                ref["refuri"] = "#" + nodes.fully_normalize_name(name)


def setup(app):
    app.add_transform(EvidenceAnchors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
