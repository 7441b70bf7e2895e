"""The book's stored models: one function per chapter model that builds it and
load-or-trains it with the active profile's recipe.

Chapter 10 compares the models of chapters 6, 7 and 9; calling the same function with the
same profile and data gives the same checkpoint identity, so it loads instead of retraining.
Each function returns the trained model (EMA weights where the recipe keeps an average) and
the `companion.train.FitResult`.
"""

from __future__ import annotations
