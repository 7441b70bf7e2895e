import math

import pytest

from companion.run import results


def test_save_then_load_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    values = {"fd": 78.25, "steps": 6000, "device": "cuda", "loaded": True}
    path = results.save("ch9", values, "gpu")
    assert path == tmp_path / "results" / "ch9-gpu.json"
    assert results.load("ch9", "gpu") == values
    assert results.load("ch9", "cpu") is None  # profiles never mix


def test_missing_chapter_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    assert results.load("ch9", "ci") is None


@pytest.mark.parametrize("bad, error", [(math.nan, ValueError), (math.inf, ValueError),
                                        ([1.0], TypeError), (None, TypeError)])
def test_bad_values_are_refused(tmp_path, monkeypatch, bad, error):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    with pytest.raises(error, match="fd"):
        results.save("ch9", {"fd": bad}, "gpu")
    assert not results.results_path("ch9", "gpu").exists()


def test_corrupt_file_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    path = results.results_path("ch9", "ci")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="re-run"):
        results.load("ch9", "ci")


def test_concurrent_saves_and_loads_never_see_half_a_file(tmp_path, monkeypatch):
    """Issue 34, 3: saves shared one temporary name, so one save could move another's
    half-written file, or find it gone (FileNotFoundError)."""
    import threading

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    errors = []

    def writer(i):
        try:
            for j in range(40):
                results.save("ch9", {"writer": i, "n": j, "pad": "x" * 5000}, "ci")
        except Exception as err:  # noqa: BLE001 - collected, then asserted
            errors.append(err)

    def reader():
        try:
            for _ in range(200):
                got = results.load("ch9", "ci")
                assert got is None or len(got["pad"]) == 5000
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not list((tmp_path / "results").glob("*.tmp"))
    assert oct(results.results_path("ch9", "ci").stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("chapter", ["", "../ch9", None])
def test_chapter_must_be_a_name(tmp_path, monkeypatch, chapter):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="chapter must be a name"):
        results.save(chapter, {"a": 1}, "ci")
