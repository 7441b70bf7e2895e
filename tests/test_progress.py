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
