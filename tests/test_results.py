import math

import pytest

from companion import results


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
