"""The machinery that runs the book: training runs and their checkpoints, argument checks,
distributed ranks, profiles, progress bars, memory chunks, results, glue, tables and the
Colab install. It imports nothing from the mathematics (`companion`'s other modules), which
call it through a small surface: `fit`'s arguments, the profile, load-or-train, the checks.
"""
