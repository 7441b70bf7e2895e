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


def test_every_iteration_runs_in_the_smoke_run_too(monkeypatch):
    # the smoke run cuts a slow network (companion.run.smoke), never a loop: the book's
    # samplers read the same in every run
    import time

    monkeypatch.setenv("BOOK_SMOKE", "1")
    seen = []
    for i in progress(range(300, 0, -1)):
        seen.append(i)
        time.sleep(0.001)
    assert seen == list(range(300, 0, -1))
