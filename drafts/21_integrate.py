"""Apply chapter 21's bookkeeping edits (TOC, intro table, README badge, prose budget)."""
from pathlib import Path
R = Path("/work/main")
def edit(path, a, b):
    p = R / path; s = p.read_text()
    if b in s: return
    assert a in s, (path, a[:60]); p.write_text(s.replace(a, b, 1))
edit("_toc.yml", "      - file: notebooks/20_judging_samples\n",
     "      - file: notebooks/20_judging_samples\n      - file: notebooks/21_transformers_text\n")
intro = (R / "book/intro.md").read_text()
row20 = next(l for l in intro.splitlines() if l.startswith("| 20 |"))
edit("book/intro.md", row20 + "\n", row20 + "\n" + "| 21 | {doc}`/notebooks/21_transformers_text` | "
     "captions with known answers (each digit's label and its thickness, width and slant measured on the ink, "
     "cut at the training tertiles; MNIST's preprocessing leaves size and position nothing to say); a diffusion "
     "transformer from its pieces (patches, sine-cosine positions, adaLN-Zero blocks that start as the identity, "
     "a text encoder trained with it); three transformers against chapter 9's U-Net at equal training FLOPs, "
     "with the budget trend; the caption through adaLN, in-context tokens or cross-attention, judged by how often "
     "the samples obey it; classifier-free guidance with captions, and captions the data rarely pair; "
     "cross-attention over the reverse chain |\n")
readme = (R / "README.md").read_text()
row = next(l for l in readme.splitlines() if l.startswith("| 20. Judging samples"))
edit("README.md", row + "\n", row + "\n" + row.replace("20. Judging samples", "21. Transformers and text")
     .replace("20_judging_samples", "21_transformers_text") + "\n")
edit("tools/prose_budget.py", '"19_discrete_latents", "20_judging_samples"})',
     '"19_discrete_latents", "20_judging_samples",\n    "21_transformers_text"})')
print("ok")
