"""Pilot (issue 93) for chapter 15's few-step students: their distance to the data against
their updates, scored the way the page scores them, so that the `cpu` budget comes from
the trend.

    python tools/pilot_students.py consistency:400 consistency:800 distill:240 distill:60:32

Each argument is one run of chapter 15's recipe (`recipes.consistency_distillation` or
`recipes.progressive_distillation`) in the `cpu` profile with one setting changed: the
consistency student's updates (`cd_steps`), or a distillation round's updates
(`distill_steps`) and optionally the first round's Euler steps (`rounds_from`). Every
student starts from chapter 13's flow model (shipped) on the book's offline digits
(BOOK_OFFLINE=1) and is scored as the page scores it: the Fréchet distance of 400 samples
from the page's noise (seed 12; the consistency student's fresh noise, seed 13) at 1, 2, 4
and 8 network evaluations, in chapter 9's judge's features, against the floor of real
training digits; the teacher by Euler's method at 8 to 64 steps beside them. The bar is 2x
the floor.

Checkpoints go to .cache/pilot (BOOK_CACHE overrides), one per run; a finished run loads.
The table is printed and written, with the machine and seconds, to
benchmarks/results/pilots/students-<device>.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
os.environ.setdefault("BOOK_OFFLINE", "1")
os.environ.setdefault("BOOK_PROFILE", "cpu")
os.environ.setdefault("BOOK_CACHE", str(ROOT / ".cache" / "pilot"))

import torch  # noqa: E402
from pilot import BAR, write_record  # noqa: E402

import companion  # noqa: E402
from companion import fewstep, recipes  # noqa: E402
from companion.data import load  # noqa: E402
from companion.metrics import frechet_floor, frechet_jackknife  # noqa: E402
from companion.models.classifier import predict, to_unit  # noqa: E402
from companion.recipes import flows  # noqa: E402
from companion.run.memory import map_chunks  # noqa: E402

N = 400
KINDS = {"consistency": "cd_steps", "distill": "distill_steps"}


def parse(spec: str) -> tuple[str, dict]:
    """'consistency:800' or 'distill:60[:32]' -> (kind, the settings it changes)."""
    kind, *numbers = spec.split(":")
    if kind not in KINDS or not 1 <= len(numbers) <= (2 if kind == "distill" else 1) \
            or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise SystemExit(f"{spec!r}: give consistency:UPDATES or distill:UPDATES[:FROM] "
                         "(positive whole numbers), e.g. consistency:800 distill:60:32")
    change = {KINDS[kind]: int(numbers[0])}
    if len(numbers) == 2:
        change["rounds_from"] = int(numbers[1])
    return kind, change


def main(argv: list[str]) -> int:
    runs = [parse(a) for a in argv] if argv else [parse("consistency:800")]
    profile, device = companion.setup(seed=0)
    if profile.name != "cpu":
        raise SystemExit(f"the pilot scores the cpu recipe; BOOK_PROFILE is {profile.name}")
    data = load("mnist", n_train=profile.n_train, n_test=profile.n_test, device=device)
    teacher, _ = recipes.flow_matching(data.x_train, profile, device)
    K = recipes.ddpm_settings(profile)["T"]
    judge, _ = recipes.classifier(data, profile, device)

    def features(x):
        return map_chunks(lambda c: predict(judge, c)[0], x).cpu()

    ref = features(data.x_test)
    floor = frechet_floor(features, data.x_train, ref, N).mean().item()
    z = torch.randn(N, 1, 28, 28, device=device,
                    generator=torch.Generator(device).manual_seed(12))
    sets = {}

    def score(name, x):
        sets[name] = features(to_unit(x.clamp(-1, 1)))

    teacher_field = fewstep.grid_field(recipes.eps_function(teacher, device), K)
    for n in (8, 16, 32, 64):
        score(f"teacher, {n}", fewstep.ode_sample(teacher_field, z, n))
    base, started, seconds = flows.fewstep_settings, time.time(), {}
    for kind, change in runs:
        tag = kind + "-" + "-".join(f"{k}{v}" for k, v in change.items())
        flows.fewstep_settings = lambda p, change=change: {**base(p), **change}
        try:
            t0 = time.time()
            if kind == "consistency":
                student, _ = recipes.consistency_distillation(
                    teacher, data.x_train, profile, device, prefix=f"pilot15-{tag}")
                jump = fewstep.jump_map(
                    fewstep.grid_field(recipes.eps_function(student, device), K))
                for n in (1, 2, 4, 8):
                    score(f"{tag}, {n}", fewstep.jump_sample(
                        jump, z, n, torch.Generator(device).manual_seed(13)))
            else:
                for n, (student, _) in recipes.progressive_distillation(
                        teacher, data.x_train, profile, device,
                        prefix=f"pilot15-{tag}").items():
                    field = fewstep.grid_field(recipes.eps_function(student, device), K)
                    score(f"{tag}, {n}", fewstep.ode_sample(field, z, n))
            seconds[tag] = round(time.time() - t0)
        finally:
            flows.fewstep_settings = base
    fd, _ = frechet_jackknife(sets, ref)
    rows = [dict(set=k, frechet=round(float(v), 1), ratio=round(float(v) / floor, 2))
            for k, v in fd.items()]
    for r in rows:
        print(f"{r['set']:>40s}: {r['frechet']:6.1f}  {r['ratio']:.2f}x the floor"
              + ("  (within the bar)" if r["ratio"] <= BAR else ""))
    record = dict(family="students", n=N, floor=round(floor, 1), bar=BAR, rows=rows,
                  seconds_per_run=seconds)
    out = write_record("students", record, device, time.time() - started)
    print(f"floor {floor:.1f} at N = {N}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
