"""CI's time by stage, held against the last landed run's (issue 91).

`.ci/run` writes each stage's wall seconds to a TSV as it goes (stage, seconds); at the end
this script prints the stages that grew by more than a fifth over the table kept in the
repository (.ci/stages.tsv, the last landed run's), so that a slow new chapter or test
is named in the run that brought it, long before CI's 90 minutes. It only reports: a
slower machine makes every stage slower, and the run's own total says whether it landed.

    python3 tools/ci_stages.py compare .ci/stages.tsv _build/ci-stages.tsv
    python3 tools/ci_stages.py keep _build/ci-stages.tsv .ci/stages.tsv --machine "..."

Standard library only: it runs before (and without) the project's venv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GROWTH = 1.2  # "more than a fifth"
FLOOR_S = 15  # a stage of 5 s that takes 8 s is noise, not growth


def read(path: Path) -> dict[str, int]:
    """{stage: seconds} from a TSV of `stage<TAB>seconds` lines; '#' lines are notes. A
    stage that ran twice (it should not) keeps its last time."""
    table = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise SystemExit(f"{path}:{n}: expected 'stage<TAB>seconds', got {line!r}")
        table[parts[0].strip()] = int(parts[1])
    return table


def grown(baseline: dict[str, int], current: dict[str, int]) -> list[str]:
    """One line per stage that took more than GROWTH times its baseline (and FLOOR_S more
    seconds), and per stage the baseline does not have."""
    out = []
    for stage, seconds in current.items():
        before = baseline.get(stage)
        if before is None:
            out.append(f"{stage}: {seconds} s, a stage the last landed run did not have")
        elif seconds > GROWTH * before and seconds - before > FLOOR_S:
            out.append(f"{stage}: {seconds} s, up {seconds / max(before, 1) - 1:.0%} "
                       f"from {before} s in the last landed run")
    return out


def compare(baseline_path: Path, current_path: Path) -> int:
    if not Path(baseline_path).exists():
        print(f"CI stages: no {baseline_path} to compare with")
        return 0
    lines = grown(read(baseline_path), read(current_path))
    if lines:
        print(f"CI stages that grew by more than a fifth over {baseline_path} "
              "(find what made them slower before CI's 90 minutes run out):")
        print("\n".join(f"  {line}" for line in lines))
    else:
        print(f"CI stages: none grew by more than a fifth over {baseline_path}")
    return 0


def keep(current_path: Path, baseline_path: Path, machine: str) -> int:
    """Write the run's table as the one later runs compare with."""
    table = read(current_path)
    text = (f"# CI's wall seconds by stage in the last landed run (tools/ci_stages.py);\n"
            f"# {machine}\n" + "".join(f"{k}\t{v}\n" for k, v in table.items()))
    Path(baseline_path).write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compare", help="name the stages that grew by more than a fifth")
    c.add_argument("baseline", type=Path)
    c.add_argument("current", type=Path)
    k = sub.add_parser("keep", help="store a run's table as the baseline")
    k.add_argument("current", type=Path)
    k.add_argument("baseline", type=Path)
    k.add_argument("--machine", required=True, help="the machine and commit it ran on")
    args = ap.parse_args(argv)
    if args.what == "compare":
        return compare(args.baseline, args.current)
    return keep(args.current, args.baseline, args.machine)


if __name__ == "__main__":
    sys.exit(main())
