from companion.progress import progress


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


def test_the_smoke_run_cuts_slow_loops_to_a_couple_of_steps(monkeypatch):
    import time

    from companion.profiles import SMOKE_SLOW, SMOKE_STEPS

    def run(loop, seconds):
        seen = []
        for i in loop:
            seen.append(i)
            time.sleep(seconds)
        return seen

    monkeypatch.setenv("BOOK_SMOKE", "1")
    # a sampler calling a big network: stopped after its first steps
    assert run(progress(range(10, 0, -1)), 2 * SMOKE_SLOW) == \
        list(range(10, 10 - SMOKE_STEPS, -1))
    # a toy model's loop: whole, so that later cells find every step they read
    assert run(progress(range(200, 0, -1)), 0) == list(range(200, 0, -1))
    monkeypatch.setenv("BOOK_SMOKE", "0")
    assert run(progress(range(10, 0, -1)), 2 * SMOKE_SLOW) == list(range(10, 0, -1))
