"""The smoke run's work log (companion.run.work): what the gpu run would compute."""

import json

import pytest
import torch
from torch import nn

from companion.run import smoke, work
from companion.train import fit

IN, OUT, BATCH, N = 6, 5, 8, 24


class Wrapper(nn.Module):
    """A network that calls another one (counted once, in the outer call)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 2


@pytest.fixture
def log(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOK_SMOKE", "1")
    path = tmp_path / "work.json"
    monkeypatch.setenv(work.LOG_VAR, str(path))
    work.reset()
    yield path
    work.reset()


def read(path):
    work.flush(force=True)
    return json.loads(path.read_text())


def test_a_fit_logs_the_gpu_runs_steps_and_flops_per_step(log):
    model = nn.Linear(IN, OUT)
    x = torch.randn(N, IN)
    fit(model, lambda m, b: m(b).pow(2).mean(), x, steps=300, batch_size=BATCH, quiet=True)
    (entry,) = read(log)["train"]
    assert entry["steps"] == 300  # the gpu run's, not the smoke run's two
    assert entry["batch"] == BATCH and entry["rows"] == N and entry["epochs"] is None
    # forward 2*B*in*out; backward only the weight's gradient (the data needs none)
    assert entry["flops_step"] == 4 * BATCH * IN * OUT
    assert entry["params"] == IN * OUT + OUT
    # addmm, pow, mean and their gradients, the gradient's mm and sum: a dozen kernels
    assert 6 <= entry["ops_step"] <= 30


def test_an_epoch_run_counts_its_steps_from_the_data(log):
    model = nn.Linear(IN, OUT)
    fit(model, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), epochs=4,
        batch_size=BATCH, quiet=True)
    (entry,) = read(log)["train"]
    assert entry["steps"] == 4 * N // BATCH and entry["epochs"] == 4


def test_eval_calls_are_counted_per_shape_even_when_repeated(log):
    inner = nn.Linear(IN, OUT)
    fit(inner, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=5,
        batch_size=BATCH, quiet=True)
    with torch.no_grad():
        for _ in range(7):
            inner(torch.randn(3, IN))
        inner(torch.randn(4, IN))
    calls = {tuple(e["shape"][0]): e for e in read(log)["eval"]}
    assert calls[(3, IN)]["calls"] == 7 and calls[(4, IN)]["calls"] == 1
    assert calls[(3, IN)]["flops_call"] == 2 * 3 * IN * OUT  # measured, not the repeat's 0


def test_a_large_batch_is_counted_whole_and_computed_on_a_few_rows(log):
    net = nn.Sequential(nn.Linear(IN, 64), nn.ReLU(), nn.Linear(64, OUT))
    fit(net, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=5,
        batch_size=BATCH, quiet=True)
    x = torch.randn(1000, IN)
    with torch.no_grad():
        out = net(x)
        again = net(torch.randn(1000, IN))
    rows = smoke.profiles.SMOKE_BATCH
    assert out.shape == (1000, OUT)
    torch.testing.assert_close(out[:rows], net[2](net[1](net[0](x[:rows]))))
    assert torch.equal(out[rows:2 * rows], out[:rows])  # the few rows, repeated
    assert torch.equal(again, out)  # then the output repeats
    (entry,) = read(log)["eval"]
    assert entry["flops_call"] == 2 * 1000 * (IN * 64 + 64 * OUT) and entry["calls"] == 2
    assert 3 <= entry["ops_call"] <= 6  # two addmm and a relu


def test_counting_work_takes_the_profiles_counts(log, monkeypatch):
    from companion.run.profiles import get_profile

    monkeypatch.setenv("BOOK_PROFILE", "gpu")
    assert get_profile().count(ci=2, cpu=3, gpu=5) == 5
    monkeypatch.setenv("BOOK_WORK_COUNTS", "ci")  # timing the host's own work
    assert get_profile().count(ci=2, cpu=3, gpu=5) == 2
    monkeypatch.setenv("BOOK_WORK_COUNTS", "gpu")
    with pytest.raises(ValueError, match="BOOK_WORK_COUNTS='gpu': give 'ci' or 'profile'"):
        get_profile().count(ci=2, cpu=3, gpu=5)
    monkeypatch.delenv("BOOK_WORK_COUNTS")
    monkeypatch.delenv(work.LOG_VAR)  # a plain smoke run: the ci count
    assert get_profile().count(ci=2, cpu=3, gpu=5) == 2


def test_a_network_inside_another_is_counted_once(log):
    inner = nn.Linear(IN, OUT)
    outer = Wrapper(inner)
    fit(outer, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=5,
        batch_size=BATCH, quiet=True)
    smoke.cut(inner)  # as if trained on its own too
    with torch.no_grad():
        outer(torch.randn(2, IN))
    (entry,) = read(log)["eval"]
    assert entry["network"] == "Wrapper" and entry["calls"] == 1
    assert entry["flops_call"] == 2 * 2 * IN * OUT


def test_nothing_is_logged_without_the_variable_or_outside_a_smoke_run(log, monkeypatch):
    monkeypatch.setenv("BOOK_SMOKE", "0")
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=3,
        batch_size=BATCH, quiet=True)
    assert not log.exists()
    monkeypatch.setenv("BOOK_SMOKE", "1")
    monkeypatch.delenv(work.LOG_VAR)
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=3,
        batch_size=BATCH, quiet=True)
    assert not log.exists() and not work.enabled()


def test_compile_cuda_compiles_only_on_a_gpu_and_the_log_says_the_gpu_would(log):
    model = nn.Linear(IN, OUT)
    result = fit(model, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=3,
                 batch_size=BATCH, quiet=True, compile="cuda")
    assert result.steps == 2  # the smoke run's, eagerly on this CPU
    (entry,) = read(log)["train"]
    assert entry["compiled"] is True
    with pytest.raises(ValueError, match="compile='yes'.*True, False or 'cuda'"):
        fit(model, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=3,
            batch_size=BATCH, quiet=True, compile="yes")


def test_a_fit_resumed_from_an_earlier_fits_checkpoint_counts_only_its_own_steps(log,
                                                                                  tmp_path):
    """As chapter 9 trains 600 steps into an early checkpoint, then continues from it to
    the whole run: the gpu run's second fit takes 6,000 - 600 steps, not 6,000 - 2."""
    import shutil

    x = torch.randn(N, IN)
    torch.manual_seed(0)
    early, full = tmp_path / "early.pt", tmp_path / "full.pt"
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), x, steps=600,
        batch_size=BATCH, quiet=True, checkpoint=early)
    shutil.copy(early, full)  # what recipes._continue does
    torch.manual_seed(0)
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), x, steps=6000,
        batch_size=BATCH, quiet=True, checkpoint=full)
    first, second = read(log)["train"]
    assert first["steps"] == 600 and second["steps"] == 6000 - 600


def test_a_fit_on_a_checkpoint_this_run_trained_before_takes_no_steps(log, tmp_path):
    """The gpu run finished it the first time, so the second call just loads."""
    x = torch.randn(N, IN)
    path = tmp_path / "model.pt"
    for _ in range(2):
        torch.manual_seed(0)
        fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), x, steps=600,
            batch_size=BATCH, quiet=True, checkpoint=path)
    first, second = read(log)["train"]
    assert first["steps"] == 600 and second["steps"] == 0


def test_a_network_whose_weights_take_a_gradient_is_computed_not_repeated(log):
    net = nn.Linear(IN, OUT)
    fit(net, lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=5,
        batch_size=BATCH, quiet=True)
    x = torch.randn(20, IN)
    for _ in range(2):  # the second call would repeat, without a gradient
        (grad,) = torch.autograd.grad(net(x).sum(), net.weight)
    assert grad.abs().sum() > 0
    assert read(log)["eval"][0]["calls"] == 2


def test_two_runs_sharing_the_log_keep_both_runs_entries(log, monkeypatch):
    """Issue 96: two smoke runs given one $BOOK_WORK_LOG each rewrote the file with their
    own counts, so it held one run's. Each run's part is kept, and a run that writes
    again replaces its own part, not the other's."""
    monkeypatch.setattr(work, "_RUN", "run A", raising=False)
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=300,
        batch_size=BATCH, quiet=True)
    counts_a = list(work._train)
    work.reset()  # run B: another process, with counts of its own
    monkeypatch.setattr(work, "_RUN", "run B", raising=False)
    fit(nn.Linear(IN, 2 * OUT), lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN),
        steps=500, batch_size=BATCH, quiet=True)
    both = read(log)
    assert [e["steps"] for e in both["train"]] == [300, 500]
    assert list(both["runs"]) == ["run A", "run B"]
    work.reset()  # run A writes again (its exit's flush): B's entry stays, A's is not doubled
    work._train.extend(counts_a)
    monkeypatch.setattr(work, "_RUN", "run A", raising=False)
    assert [e["steps"] for e in read(log)["train"]] == [300, 500]


def test_a_log_of_one_earlier_run_is_kept_as_that_run(log):
    earlier = {"train": [{"steps": 7}], "eval": [], "seconds": 1.0, "compute_seconds": 0.5}
    log.write_text(json.dumps(earlier))
    fit(nn.Linear(IN, OUT), lambda m, b: m(b).pow(2).mean(), torch.randn(N, IN), steps=300,
        batch_size=BATCH, quiet=True)
    data = read(log)
    assert [e["steps"] for e in data["train"]] == [7, 300]
    assert data["runs"]["an earlier run"] == earlier and data["compute_seconds"] >= 0.5
