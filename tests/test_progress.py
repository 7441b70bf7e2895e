from companion.run.progress import progress


def test_quiet_bar_is_disabled_and_still_iterates(capsys):
    bar = progress(range(5), quiet=True)
    assert bar.disable
    assert list(bar) == list(range(5))
    assert capsys.readouterr().err == ""


def test_default_follows_profile(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    assert progress(range(2)).disable
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    assert not progress(range(2)).disable


def test_book_progress_0_silences_every_bar(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    monkeypatch.setenv("BOOK_PROGRESS", "0")
    assert progress(range(2)).disable
    assert progress(range(2), quiet=False).disable  # even where a cell asks for one
    monkeypatch.setenv("BOOK_PROGRESS", "1")
    assert not progress(range(2)).disable


def test_the_smoke_run_thins_slow_loops_and_keeps_their_round_steps(monkeypatch):
    import time

    from companion.run.profiles import SMOKE_KEEP, SMOKE_LOOP

    def run(loop, seconds):
        seen = []
        for i in loop:
            seen.append(i)
            time.sleep(seconds)
        return seen

    monkeypatch.setenv("BOOK_SMOKE", "1")
    slow = 0.02  # seconds an iteration
    # a loop that would outlast SMOKE_LOOP at its pace: its first two steps, then every
    # n / SMOKE_KEEP-th (t = 0.4 T among them, which chapter 9's snapshot reads) and the last
    n = 100 * SMOKE_KEEP
    assert slow * n > SMOKE_LOOP
    kept = run(progress(range(n, 0, -1)), slow)
    assert kept == [n, n - 1, *range(n - 100, 0, -100), 1]
    assert round(0.4 * n) in kept
    # a short one (a toy model's): whole, so that later cells find every step they read
    assert run(progress(range(10, 0, -1)), slow) == list(range(10, 0, -1))
    assert run(progress(range(2000, 0, -1)), 0) == list(range(2000, 0, -1))
    # and so does a long one of cheap steps (a toy model's reference chain)
    with monkeypatch.context() as m:
        m.setattr("companion.run.profiles.SMOKE_LOOP", 0.5)
        assert run(progress(range(200, 0, -1)), 0.004) == list(range(200, 0, -1))
    # one of unknown length (taken as SMOKE_UNKNOWN long) stops after its first two
    from companion.run.profiles import SMOKE_UNKNOWN

    assert run(progress(iter(range(10))), 1.2 * SMOKE_LOOP / SMOKE_UNKNOWN) == [0, 1]
    monkeypatch.setenv("BOOK_SMOKE", "0")  # and outside the smoke run, every step runs
    monkeypatch.setattr("companion.run.profiles.SMOKE_LOOP", 0.01)
    assert run(progress(range(10, 0, -1)), slow) == list(range(10, 0, -1))
