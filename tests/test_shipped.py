"""The shipped weights (companion.run.shipped): where a model comes from, in one order (the
reader's cache, the shipped file, training), what a shipped file holds, and how a pip
install fetches one (against a local HTTP server: fetched, verified, cached; a truncated or
tampered file refused by name, then trained or fetched again; no server: trained).

The last tests read the repository's own set, companion/weights: within its size budget,
every file the manifest's, every entry still the identity of the recipe that makes it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from companion.run import shipped
from companion.train import fit

X, Y = torch.randn(64, 3), torch.randn(64, 1)
BUDGET_MB = 64
# config entries a recipe computes from its data (the golden identities use fake data)
# config fields that follow from the data, not the recipe (a text model's vocabulary and
# length set its embeddings, so its weights and module tree follow the data too)
# config fields the data sets ("codec": the hash of a prior's autoencoder's identity)
FROM_DATA = {"n_train", "scale", "data", "sigma_data", "vocab_size", "length", "codec"}


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


@pytest.fixture
def book(tmp_path, monkeypatch):
    """An empty cache and an empty shipped folder of this test's own; no BOOK_TRAIN."""
    for var in ("BOOK_TRAIN", "BOOK_SHIP", "BOOK_WEIGHTS_URL", "BOOK_SMOKE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOOK_SHIPPED", str(tmp_path / "weights"))
    monkeypatch.setattr(shipped, "SOURCES", shipped.Counter())
    monkeypatch.setattr(shipped, "_SAID", set())
    monkeypatch.setattr(shipped, "WORTH", 0.0)  # these runs take milliseconds
    return tmp_path


def train(steps=30, lr=1e-2, ema=0.9, seed=0):
    """A small run with a checkpoint in the cache: (model, FitResult)."""
    from companion.run.checkpoint import checkpoint_path

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    result = fit(model, mse, (X, Y), steps=steps, batch_size=16, lr=lr, ema=ema, quiet=True,
                 config={"lr": lr}, checkpoint=checkpoint_path("toy", "cpu"))
    return model, result


def ship_one(book, monkeypatch, **kw):
    """Train once under BOOK_SHIP (make weights), then empty the cache: what a reader has."""
    monkeypatch.setenv("BOOK_SHIP", str(book / "weights"))
    model, result = train(**kw)
    monkeypatch.delenv("BOOK_SHIP")
    for f in (book / "cache" / "checkpoints").iterdir():
        f.unlink()
    shipped.SOURCES.clear()
    return model, result


def weights(module):
    return [p.detach().clone() for p in module.state_dict().values()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- what a shipped file holds --------------------------------------------------------------
def test_make_weights_exports_a_finished_run_without_its_optimizer(book, monkeypatch):
    model, result = ship_one(book, monkeypatch)
    manifest = json.loads((book / "weights" / "manifest.json").read_text())
    entry = manifest["models"]["toy-cpu.pt"]
    assert entry["file"] == "toy-cpu.safetensors" and entry["step"] == 30
    assert entry["part"] == "ema" and entry["dtype"] == "float16"
    assert entry["n_params"] == 41 and entry["identity"]["config"] == {"lr": 0.01}
    assert "rows" not in entry["identity"]["data"][0]
    assert entry["trained"]["seconds"] >= 0 and entry["trained"]["torch"]
    data = (book / "weights" / entry["file"]).read_bytes()
    assert len(data) == entry["bytes"] and shipped.sha256(data) == entry["sha256"]
    from safetensors.torch import load

    tensors = load(data)
    assert sorted(tensors) == sorted(f"ema/{k}" for k in model.state_dict())
    assert all(t.dtype == torch.float16 for t in tensors.values())
    # the run goes on with the shipped (float16) weights, as a reader's would
    state = result.ema.model.state_dict()
    assert all(torch.equal(state[k], tensors[f"ema/{k}"].float()) for k in state)


def test_a_run_cheaper_than_its_file_is_listed_not_shipped(book, monkeypatch):
    monkeypatch.setattr(shipped, "WORTH", 3600.0)
    ship_one(book, monkeypatch)
    manifest = shipped.read_manifest(book / "weights")
    assert manifest["models"] == {} and list(manifest["cheap"]) == ["toy-cpu.pt"]
    assert not list((book / "weights").glob("*.safetensors"))
    _, result = train()  # nothing shipped: it trains
    assert shipped.SOURCES == {"trained": 1} and result.resumed_at == 0


def test_a_value_beyond_float16_keeps_the_file_in_float32():
    big = {"w": torch.tensor([1.0, 7e4])}
    assert shipped._ship_dtype(big) is torch.float32
    assert shipped._ship_dtype({"w": torch.tensor([1.0, -6e4])}) is torch.float16




def test_a_shipped_history_is_packed_and_reads_back_as_the_run_recorded_it(book, monkeypatch):
    _, result = ship_one(book, monkeypatch, steps=40)
    entry = shipped.read_manifest(book / "weights")["models"]["toy-cpu.pt"]
    data = (book / "weights" / entry["file"]).read_bytes()
    back = shipped.decode(data, "toy-cpu.pt", entry["file"]).history
    assert back == result.history and back["step"] == list(range(1, 41))
    header = data[8:8 + int.from_bytes(data[:8], "little")].decode()
    assert '{\\"range\\": [1, 40]}' in header  # the updates stored as their first and last
    assert '{\\"float32\\": \\"' in header  # the losses as float32 bytes, not decimals
    assert '"loss": [' not in header.replace("\\", "")
    # a gap, a bool and what float32 cannot hold stay as they were
    odd = {"step": [1, 2, 4], "flag": [True, False], "big": [1e39, float("nan")], "n": 3}
    again = shipped.unpack_history(json.loads(json.dumps(shipped.pack_history(odd))))
    assert again["step"] == [1, 2, 4] and again["flag"] == [True, False]
    assert "float32" not in json.dumps(shipped.pack_history(odd)["big"])
    assert again["big"][0] == 1e39 and again["big"][1] != again["big"][1] and again["n"] == 3
    assert shipped.unpack_history(shipped.pack_history({"x": [0.1]})) == {"x": [
        float(torch.tensor(0.1, dtype=torch.float32))]}  # a float64 keeps float32's digits
# --- the order: cache, shipped, training ---------------------------------------------------------
def test_an_empty_cache_loads_the_shipped_run_and_trains_nothing(book, monkeypatch):
    _, first = ship_one(book, monkeypatch)
    model, again = train()
    assert again.resumed_at == 30 and again.steps == 30
    assert again.history == first.history
    assert same(weights(again.ema.model), weights(first.ema.model))
    assert same(weights(model), weights(first.ema.model))  # the network gets the average
    assert shipped.SOURCES == {"shipped": 1}
    assert not (book / "cache" / "checkpoints" / "toy-cpu.pt").exists()  # nothing written


def test_the_readers_own_checkpoint_comes_before_the_shipped_file(book, monkeypatch):
    ship_one(book, monkeypatch)
    monkeypatch.setenv("BOOK_TRAIN", "1")
    _, own = train()  # trained here, into the cache
    monkeypatch.delenv("BOOK_TRAIN")
    shipped.SOURCES.clear()
    _, again = train()
    assert shipped.SOURCES == {"cache": 1}
    assert same(weights(again.ema.model), weights(own.ema.model))


def test_book_train_trains_from_scratch(book, monkeypatch):
    ship_one(book, monkeypatch)
    monkeypatch.setenv("BOOK_TRAIN", "1")
    _, result = train()
    assert result.resumed_at == 0 and shipped.SOURCES == {"trained": 1}


@pytest.mark.parametrize(("change", "field"), [
    ({"lr": 2e-2}, "config['lr']"),
    ({"ema": 0.8}, "ema"),
    ({"steps": 40}, "40"),
])
def test_a_shipped_file_of_another_run_is_not_used_and_the_field_is_named(
        book, monkeypatch, change, field):
    ship_one(book, monkeypatch)
    with pytest.warns(UserWarning, match="trains") as said:
        _, result = train(**change)
    assert result.resumed_at == 0 and shipped.SOURCES == {"trained": 1}
    assert any(field in str(w.message) for w in said)


def test_other_data_is_said_once_with_the_switch(book, monkeypatch, capsys):
    ship_one(book, monkeypatch)
    from companion.run.checkpoint import checkpoint_path

    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a calm note, not a warning
            fit(model, mse, (X + 1, Y), steps=30, batch_size=16, lr=1e-2, ema=0.9,
                quiet=True, config={"lr": 1e-2}, checkpoint=checkpoint_path("toy", "cpu"))
        (Path(checkpoint_path("toy", "cpu"))).unlink()
    out = capsys.readouterr().out
    assert out.count("trained on the book's own data") == 1 and "BOOK_OFFLINE=1" in out


def test_a_damaged_shipped_file_is_refused_by_name_and_the_model_trains(book, monkeypatch):
    ship_one(book, monkeypatch)
    path = book / "weights" / "toy-cpu.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"toy-cpu\.safetensors have SHA-256"):
        _, result = train()
    assert result.resumed_at == 0 and shipped.SOURCES == {"trained": 1}


def test_a_manifest_that_is_not_json_is_an_error_naming_it(book, monkeypatch):
    ship_one(book, monkeypatch)
    (book / "weights" / "manifest.json").write_text("<<<<<<< HEAD\n")
    with pytest.raises(shipped.ShippedFileError, match="manifest.json cannot be read"):
        train()


# --- a pip install: fetched from the repository ---------------------------------------------------
@contextlib.contextmanager
def serving(folder: Path):
    """A local HTTP server of `folder`; yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def published(book, monkeypatch):
    """The shipped set as a pip install sees it: the manifest in the package, the files on
    a server (returned: the served folder)."""
    _, result = ship_one(book, monkeypatch)
    served = book / "served"
    (book / "weights").rename(served)
    (book / "weights").mkdir()
    (book / "weights" / "manifest.json").write_text((served / "manifest.json").read_text())
    return served, result


def test_a_pip_install_fetches_verifies_and_caches_the_file(book, monkeypatch):
    served, first = published(book, monkeypatch)
    with serving(served) as url:
        monkeypatch.setenv("BOOK_WEIGHTS_URL", url)
        _, result = train()
    assert shipped.SOURCES == {"shipped": 1} and result.resumed_at == 30
    assert same(weights(result.ema.model), weights(first.ema.model))
    copy = book / "cache" / "shipped" / "toy-cpu.safetensors"
    assert copy.read_bytes() == (served / "toy-cpu.safetensors").read_bytes()
    # the server gone, the cached copy serves
    shipped.SOURCES.clear()
    _, again = train()
    assert shipped.SOURCES == {"shipped": 1}


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
def test_a_truncated_or_tampered_download_is_refused_by_name_then_trained(
        book, monkeypatch, damage):
    served, _ = published(book, monkeypatch)
    path = served / "toy-cpu.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    else:
        data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with serving(served) as url:
        monkeypatch.setenv("BOOK_WEIGHTS_URL", url)
        expect = "truncated" if damage == "truncated" else "SHA-256"
        with pytest.warns(UserWarning, match=rf"{url}toy-cpu\.safetensors .*{expect}"):
            _, result = train()
    assert result.resumed_at == 0 and shipped.SOURCES == {"trained": 1}
    assert not (book / "cache" / "shipped" / "toy-cpu.safetensors").exists()


def test_a_damaged_cached_copy_is_deleted_and_fetched_again(book, monkeypatch):
    served, _ = published(book, monkeypatch)
    copy = book / "cache" / "shipped" / "toy-cpu.safetensors"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"not weights")
    with serving(served) as url:
        monkeypatch.setenv("BOOK_WEIGHTS_URL", url)
        with pytest.warns(UserWarning, match="fetching it again"):
            _, result = train()
    assert shipped.SOURCES == {"shipped": 1} and result.resumed_at == 30
    assert copy.read_bytes() == (served / "toy-cpu.safetensors").read_bytes()


def test_no_server_says_so_once_and_trains(book, monkeypatch, capsys):
    published(book, monkeypatch)
    with serving(book) as url:
        pass  # the port is closed again: nobody answers there
    monkeypatch.setenv("BOOK_WEIGHTS_URL", url)
    monkeypatch.setenv("BOOK_WEIGHTS_TIMEOUT", "5")
    _, result = train()
    assert result.resumed_at == 0 and shipped.SOURCES == {"trained": 1}
    assert "cannot be fetched" in capsys.readouterr().out


def test_a_bad_timeout_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("BOOK_WEIGHTS_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="BOOK_WEIGHTS_TIMEOUT='soon'"):
        shipped.timeout()


def test_the_url_of_a_git_install_is_the_installed_commit(monkeypatch):
    monkeypatch.delenv("BOOK_WEIGHTS_URL", raising=False)
    record = {"url": "https://github.com/autoencoders-to-diffusion/book.git",
              "vcs_info": {"vcs": "git", "commit_id": "abc123", "requested_revision": "main"}}

    class Dist:
        def read_text(self, name):
            return json.dumps(record) if name == "direct_url.json" else None

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    assert shipped.base_url() == ("https://raw.githubusercontent.com/autoencoders-to-diffusion/"
                                  "book/abc123/companion/weights/")
    record["vcs_info"] = {}
    assert shipped.base_url() is None  # an install from a folder: nothing to fetch from


def test_report_says_where_the_models_came_from(monkeypatch):
    monkeypatch.setattr(shipped, "SOURCES", shipped.Counter(shipped=3, trained=1))
    assert shipped.report() == "3 shipped with the book, 1 trained here"


# --- the repository's own set ---------------------------------------------------------------------
def test_the_shipped_set_is_within_its_budget_and_every_file_is_the_manifests():
    folder = shipped.FOLDER
    manifest = shipped.read_manifest(folder)["models"]
    files = sorted(folder.glob("*.safetensors"), key=lambda p: -p.stat().st_size)
    total = sum(p.stat().st_size for p in files)
    print(f"shipped set: {len(files)} files, {total / 2**20:.1f} MB of {BUDGET_MB} MB; largest:")
    for p in files[:5]:
        print(f"  {p.name}: {p.stat().st_size / 2**20:.2f} MB")
    assert total <= BUDGET_MB * 2**20, (
        f"the shipped set holds {total / 2**20:.1f} MB, over its {BUDGET_MB} MB budget")
    listed = {e["file"] for e in manifest.values()}
    assert {p.name for p in files} == listed, "files and manifest disagree: run make weights"
    for name, entry in manifest.items():
        data = (folder / entry["file"]).read_bytes()
        shipped.verified(data, entry, entry["file"])
        assert shipped.decode(data, name, entry["file"]).step == entry["step"]


def _sized_by_data(asked: int, want: dict, have: dict, step: int) -> bool:
    """True where a recipe's updates scale with its training set (epochs of it, as chapter
    19's VQ-VAEs): the golden's count on fake data, scaled to the shipped run's n_train,
    lands within 5% of the shipped updates."""
    n_want, n_have = want["config"].get("n_train"), have["config"].get("n_train")
    if not n_want or not n_have or n_want == n_have:
        return False
    return abs(asked * n_have / n_want - step) <= 0.05 * step


def test_a_data_sized_budget_is_told_from_a_changed_one():
    want, have = {"config": {"n_train": 64}}, {"config": {"n_train": 4500}}
    assert _sized_by_data(26, want, have, 1860)  # 26 updates on 64 digits: 1,828
    assert not _sized_by_data(26, want, have, 4500)  # a changed budget is still stale
    assert not _sized_by_data(4500, want, {"config": {"n_train": 64}}, 900)


def test_every_shipped_file_is_still_its_recipes_run():
    """The manifest's identities and updates against the recipes' (tests/data/
    recipe_identities.json, computed on fake data: the data's own fields are not compared
    here): a recipe whose budget changed ships again."""
    golden = json.loads((Path(__file__).parent / "data" / "recipe_identities.json")
                        .read_text())["cpu"]
    made = {c["checkpoint"]: c["identity"] for calls in golden.values() for c in calls
            if c.get("checkpoint") and "identity" in c}
    budget = {c["checkpoint"]: c["updates"] for calls in golden.values() for c in calls
              if c.get("checkpoint") and "updates" in c}
    stale = []
    for name, entry in shipped.read_manifest(shipped.FOLDER)["models"].items():
        if name not in made:
            continue  # trained by a notebook's own fit call, not a recipe
        want, have = made[name], entry["identity"]
        if name in budget and budget[name] != entry["step"] \
                and not _sized_by_data(budget[name], want, have, entry["step"]):
            stale.append(f"{name}: {entry['step']} updates, its recipe asks {budget[name]}")
        lines = have["structure"]
        structure = {"lines": len(lines),
                     "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
        sized_by_data = any(want["config"].get(k) != have["config"].get(k)
                            for k in ("vocab_size", "length"))
        for key in ("model", "n_params", "optimizer", "ema", "batch_size"):
            if want.get(key) != have.get(key) and not (key == "n_params" and sized_by_data):
                stale.append(f"{name}: {key}")
        if want["structure"] != structure and not sized_by_data:
            stale.append(f"{name}: module tree")
        wcfg = {k: v for k, v in want["config"].items() if k not in FROM_DATA}
        hcfg = {k: v for k, v in have["config"].items() if k not in FROM_DATA}
        differ = sorted(k for k in wcfg.keys() | hcfg.keys() if wcfg.get(k) != hcfg.get(k))
        if differ:
            stale.append(f"{name}: config {differ}")
    assert not stale, ("shipped weights no longer match their recipes: "
                       + "; ".join(stale) + ". Run make weights to ship them again.")


# --- make weights: which chapters run ---------------------------------------------------------
def _weights_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "weights_tool", Path(__file__).resolve().parents[1] / "tools" / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_chapter_runs_again_when_its_code_changes_not_its_prose(tmp_path):
    tool = _weights_tool()
    cells = [{"cell_type": "markdown", "source": ["# A"]},
             {"cell_type": "code", "source": ["fit(model, steps=10)"]}]
    nb = tmp_path / "nb.ipynb"
    nb.write_text(json.dumps({"cells": cells}))
    before = tool.code_hash(nb)
    cells[0]["source"] = ["# A, reworded"]
    nb.write_text(json.dumps({"cells": cells}))
    assert tool.code_hash(nb) == before
    cells[1]["source"] = ["fit(model, steps=20)"]
    nb.write_text(json.dumps({"cells": cells}))
    assert tool.code_hash(nb) != before


def test_make_weights_picks_the_chapters_without_a_current_record():
    tool = _weights_tool()
    books = tool.notebooks()
    record = {p.stem: tool.code_hash(p) for p in books[1:]}
    record[books[-1].stem] = "stale"
    assert tool.pick([], {"chapters": record}) == [books[0], books[-1]]
    assert [p.stem for p in tool.pick(["9"], {})] == ["09_ddpm_mnist"]
    with pytest.raises(SystemExit, match="no chapter '99'"):
        tool.pick(["99"], {})


def test_what_a_stored_cpu_page_needs_is_shipped_or_too_cheap_to_ship():
    """For every chapter make weights has run: each model its stored page loaded is shipped
    or listed as cheap; for every stored run that recorded what it trained: only cheap
    models trained (the rest came from the shipped set)."""
    manifest = shipped.read_manifest(shipped.FOLDER)
    covered = set(manifest["models"]) | set(manifest.get("cheap", {}))
    lacking = []
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        run = json.loads(path.read_text())["metadata"].get("book", {}).get("execution", {})
        if run.get("profile_env") != "cpu":
            continue
        if path.stem in manifest.get("chapters", {}):
            lacking += [f"{path.stem} loads {n}" for n in run.get("loaded", [])
                        if n not in covered]
        lacking += [f"{path.stem} trained {n}" for n in run.get("trained", [])
                    if n not in manifest.get("cheap", {})]
    assert not lacking, ("not in the shipped set: " + "; ".join(lacking)
                         + ". Run make weights for these chapters.")


def test_facts_name_the_machine_and_updates_of_the_shipped_runs(book, monkeypatch):
    ship_one(book, monkeypatch)
    monkeypatch.setattr(shipped, "ORIGIN", {})
    train()
    said = shipped.facts("toy-cpu.pt")
    entry = shipped.read_manifest()["models"]["toy-cpu.pt"]
    assert said["runs"] == "one training run" and said["updates"] == "30 updates"
    assert said["machine"] == entry["trained"]["device"]
    assert said["source"] == "loaded from the shipped files"
    assert said == shipped.facts()  # default: every checkpoint of this process
    assert all(len(v) <= 60 for v in said.values())  # glued inside a sentence
    monkeypatch.setenv("BOOK_TRAIN", "1")
    from companion.run.checkpoint import checkpoint_path

    Path(checkpoint_path("toy", "cpu")).unlink(missing_ok=True)
    train()
    assert shipped.facts("toy-cpu.pt")["source"] == "trained in this run"
    with pytest.raises(ValueError, match="'other-cpu.pt'"):
        shipped.facts("other-cpu.pt")
    shipped.ORIGIN["cheap-cpu.pt"] = "trained"
    with pytest.raises(ValueError, match="make weights"):
        shipped.facts("cheap-cpu.pt")
    # a snapshot counts with its run, its seconds inside the run's; three sources at most
    # 60 characters
    manifest = shipped.read_manifest()
    snap = {**entry, "step": 10, "trained": {**entry["trained"], "seconds": 1.0}}
    manifest["models"]["toy-step10-cpu.pt"] = snap
    monkeypatch.setattr(shipped, "read_manifest", lambda where=None: manifest)
    shipped.ORIGIN.update({"toy-cpu.pt": "shipped", "toy-step10-cpu.pt": "cache"})
    both = shipped.facts("toy-cpu.pt", "toy-step10-cpu.pt")
    assert both["runs"] == "one training run" and both["updates"] == "30 updates"
    assert both["time"] == said["time"]
    assert both["source"] == "from the shipped files and your cache"
    shipped.ORIGIN["toy-cpu.pt"] = "trained"
    manifest["models"]["cheap-cpu.pt"] = entry
    three = shipped.facts("toy-cpu.pt", "toy-step10-cpu.pt", "cheap-cpu.pt")
    assert three["runs"] == "two training runs" and len(three["source"]) <= 60


def _export_many(folder: str, prefix: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    from companion.run.checkpoint import identity

    for i in range(8):
        shipped.export(Path(folder), f"{prefix}{i}-cpu.pt", model, None,
                       identity(model, {"i": i}), 10, {"step": [], "loss": []}, 60.0,
                       torch.device("cpu"))


def test_parallel_exports_into_one_folder_lose_no_entry(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=_export_many, args=(str(tmp_path), p)) for p in "ab"]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    assert [j.exitcode for j in jobs] == [0, 0]
    models = shipped.read_manifest(tmp_path)["models"]
    assert sorted(models) == sorted(f"{p}{i}-cpu.pt" for p in "ab" for i in range(8))


def staged(steps=None, resume_from=None, full=30, results=None):
    """A recipe kept at stages (recipes.snapshots' pattern): an early run, then the full
    run of `full` updates continued from it (recipes.common._continue). results: a list
    to append the FitResult to."""
    from companion.recipes.common import _continue
    from companion.run.checkpoint import checkpoint_path

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    total, config = steps or full, {"lr": 1e-2}
    path = checkpoint_path("toy" if steps is None else f"toy-step{steps}", "cpu")
    _continue(path, resume_from, model, config, (X, Y), optimizer,
              {"ema": 0.9, "batch_size": 16}, total)
    result = fit(model, mse, (X, Y), steps=total, batch_size=16, optimizer=optimizer,
                 ema=0.9, quiet=True, config=config, checkpoint=path)
    if results is not None:
        results.append(result)
    return path


def ship_stages_but(book, monkeypatch, stem: str) -> None:
    """Ship the staged toy (an early run of 10 updates, the full run of 30), then take
    `stem` out of the shipped set and empty the cache: a set one stage short."""
    monkeypatch.setenv("BOOK_SHIP", str(book / "weights"))
    staged(steps=None, resume_from=staged(steps=10))
    monkeypatch.delenv("BOOK_SHIP")
    (book / "weights" / f"{stem}.safetensors").unlink()
    with shipped.editing(book / "weights") as manifest:
        del manifest["models"][f"{stem}.pt"]
    for f in (book / "cache" / "checkpoints").iterdir():
        f.unlink()
    shipped.SOURCES.clear()


def test_a_run_continued_from_a_shipped_early_run_loads_shipped_too(book, monkeypatch):
    monkeypatch.setenv("BOOK_SHIP", str(book / "weights"))
    staged(steps=None, resume_from=staged(steps=10))
    monkeypatch.delenv("BOOK_SHIP")
    for f in (book / "cache" / "checkpoints").iterdir():
        f.unlink()
    shipped.SOURCES.clear()
    staged(steps=None, resume_from=staged(steps=10))  # the early file is not in the cache
    assert shipped.SOURCES == {"shipped": 2}


def test_a_read_only_cache_loads_the_shipped_run_and_refuses_one_that_must_train(
        book, monkeypatch):
    from companion.run import checkpoint as ck
    from companion.run import session

    ship_one(book, monkeypatch)

    def read_only(path):
        raise ck.CheckpointSaveError(f"cannot write checkpoints to {path.parent}")

    monkeypatch.setattr(session, "check_writable", read_only)
    _, result = train()
    assert shipped.SOURCES == {"shipped": 1} and result.resumed_at == 30
    assert not list((book / "cache" / "checkpoints").iterdir())  # not even a lock file
    with pytest.warns(UserWarning, match="config"), \
            pytest.raises(ck.CheckpointSaveError, match="cannot write"):
        train(lr=2e-2)  # another run: it must train, and cannot


def test_the_setup_cell_says_how_many_models_ship_for_its_profile(book, monkeypatch, capsys):
    from companion.run.runtime import setup

    setup(profile="cpu", device="cpu")
    assert "shipped weights" not in capsys.readouterr().out  # none yet
    ship_one(book, monkeypatch)
    setup(profile="cpu", device="cpu")
    out = capsys.readouterr().out
    assert "shipped weights: 1 model of this profile load" in out
    assert max(len(line) for line in out.splitlines()) <= 80  # the book's printed width
    setup(profile="ci", device="cpu")
    assert "shipped weights" not in capsys.readouterr().out  # another profile's
    monkeypatch.setenv("BOOK_TRAIN", "1")
    setup(profile="cpu", device="cpu")
    assert "not used (BOOK_TRAIN=1)" in capsys.readouterr().out


def test_a_shipped_full_run_is_loaded_even_when_its_early_run_trains(book, monkeypatch):
    """The early stage too cheap to ship trains on the page; the full run still loads from
    the shipped set (not continued from the early one, which would train it again)."""
    ship_stages_but(book, monkeypatch, "toy-step10-cpu")
    staged(steps=None, resume_from=staged(steps=10))
    assert shipped.SOURCES == {"trained": 1, "shipped": 1}


def test_a_longer_run_past_a_shipped_early_run_trains_whole(book, monkeypatch):
    """A recipe that grew (a later stage not shipped yet) and an early stage that ships but
    is not in the cache (shipped files hold no optimizer state): the later stage trains
    from its first update, not a FileNotFoundError for the early checkpoint."""
    ship_stages_but(book, monkeypatch, "toy-cpu")
    early = staged(steps=10)
    assert not early.exists()  # loaded from the shipped file, nothing cached
    staged(steps=None, resume_from=early)
    assert shipped.SOURCES == {"shipped": 1, "trained": 1}
    saved = torch.load(book / "cache" / "checkpoints" / "toy-cpu.pt", weights_only=False)
    assert saved["history"]["step"][0] == 1 and saved["step"] == 30


def test_a_grown_run_goes_on_from_its_cached_early_stage_past_a_stale_shipped_file(
        book, monkeypatch):
    """The full run ships at 30 updates; the recipe now asks 40. With its early stage in
    the cache, the full run starts from that stage (10 updates), not from the first."""
    ship_stages_but(book, monkeypatch, "toy-step10-cpu")  # the early stage trains
    results = []
    staged(steps=None, resume_from=staged(steps=10), full=40, results=results)
    assert results[-1].resumed_at == 10 and results[-1].steps == 40


def test_a_cpu_run_ships_only_when_it_saves_enough_seconds_per_mb(tmp_path, monkeypatch):
    from companion.run.checkpoint import identity

    model = nn.Linear(300, 300)  # 90,300 weights: 0.17 MB in float16
    monkeypatch.setattr(shipped, "WORTH", 40.0)
    args = (model, None, identity(model, {}), 10, {"step": [], "loss": []})
    assert shipped.export(tmp_path, "a-cpu.pt", *args, 5.0, torch.device("cpu")) is None
    assert shipped.export(tmp_path, "b-cpu.pt", *args, 9.0, torch.device("cpu")) is not None
    manifest = shipped.read_manifest(tmp_path)
    assert list(manifest["cheap"]) == ["a-cpu.pt"] and list(manifest["models"]) == ["b-cpu.pt"]
    # listed as cheap, a run timed a little over the line stays cheap; well over it, ships
    assert shipped.export(tmp_path, "a-cpu.pt", *args, 9.0, torch.device("cpu")) is None
    assert shipped.read_manifest(tmp_path)["cheap"]["a-cpu.pt"] == 9.0
    assert shipped.export(tmp_path, "a-cpu.pt", *args, 14.0, torch.device("cpu")) is not None
    assert "a-cpu.pt" not in shipped.read_manifest(tmp_path)["cheap"]
