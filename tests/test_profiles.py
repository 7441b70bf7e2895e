import pytest

from companion.run import profiles
from companion.run.profiles import PROFILES, get_profile


def test_env_var_selects_profile(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    assert get_profile().name == "ci"
    monkeypatch.setenv("BOOK_PROFILE", "GPU")
    assert get_profile().name == "gpu"


def test_explicit_name_beats_env(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "ci")
    assert get_profile("cpu").name == "cpu"


def test_default_follows_device(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: True)
    assert get_profile().name == "gpu"
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: False)
    assert get_profile().name == "cpu"


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "laptop")
    with pytest.raises(ValueError) as err:
        get_profile()
    for name in PROFILES:
        assert name in str(err.value)
    assert "laptop" in str(err.value)


def test_budgets_grow_from_ci_to_gpu():
    ci, cpu, gpu = PROFILES["ci"], PROFILES["cpu"], PROFILES["gpu"]
    for field in ("epochs", "steps", "mc_samples", "iw_samples"):
        assert getattr(ci, field) < getattr(cpu, field) <= getattr(gpu, field), field
    assert ci.quiet and not cpu.quiet and not gpu.quiet
    assert ci.n_train is not None and cpu.n_train is None


def test_pick_and_with():
    ci = PROFILES["ci"]
    assert ci.pick(ci=1, cpu=2, gpu=3) == 1
    assert PROFILES["gpu"].pick(ci=1, cpu=2, gpu=3) == 3
    smaller = ci.with_(epochs=1)
    assert smaller.epochs == 1 and ci.epochs != 1 and smaller.name == "ci"


def test_the_smoke_run_keeps_the_models_and_takes_the_ci_counts(monkeypatch):
    monkeypatch.setenv("BOOK_SMOKE", "0")
    gpu = get_profile("gpu")
    assert gpu.count(ci=1, cpu=2, gpu=3) == 3 and not gpu.smoke
    monkeypatch.setenv("BOOK_SMOKE", "1")
    smoke, ci = get_profile("gpu"), PROFILES["ci"]
    assert smoke.name == "gpu" and smoke.smoke
    assert smoke.pick(ci=1, cpu=2, gpu=3) == 3  # sizes and settings: the gpu profile's
    assert smoke.count(ci=1, cpu=2, gpu=3) == 1  # how long it runs: the ci profile's
    assert (smoke.n_train, smoke.n_test) == (ci.n_train, ci.n_test)
    assert (smoke.mc_samples, smoke.iw_samples) == (ci.mc_samples, ci.iw_samples)
    assert (smoke.epochs, smoke.steps, smoke.batch_size) == (gpu.epochs, gpu.steps,
                                                             gpu.batch_size)
