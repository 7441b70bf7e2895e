"""companion.language: the toy grammar's exact entropy rate and probabilities, the character
tokenizer, and the English text every machine has."""

from __future__ import annotations

import math
import os
import urllib.request

import pytest
import torch

from companion import language as L
from companion.data import CorruptDataError
from companion.run.checks import ArgumentError

END = L.END


def tiny() -> L.Grammar:
    """Sentences "ab.", "ab c.", "ba.", "ba c." ... small enough to enumerate by hand."""
    return L.Grammar({
        L.START: (("ab", 0.75, "x"), ("b", 0.25, "y")),
        "x": ((".", 0.5, END), ("c", 0.5, "y")),
        "y": ((".", 0.9, END), ("dd", 0.1, "z")),
        "z": ((".", 1.0, END),),
    })


def enumerate_sentences(g: L.Grammar):
    """Every sentence with its probability, by walking all paths."""
    out = []

    def walk(s, words, p):
        for w, q, nxt in g.rules[s]:
            if nxt is END:
                out.append((" ".join(words) + ".", p * q))
            else:
                walk(nxt, [*words, w], p * q)

    walk(L.START, [], 1.0)
    return out


def test_exact_entropy_and_length_match_enumeration():
    g = tiny()
    sentences = enumerate_sentences(g)
    assert sum(p for _, p in sentences) == pytest.approx(1.0)
    assert g.sentence_entropy() == pytest.approx(-sum(p * math.log2(p) for _, p in sentences))
    assert g.mean_characters() == pytest.approx(sum(p * len(s) for s, p in sentences))
    assert g.max_characters() == max(len(s) for s, _ in sentences)
    for s, p in sentences:
        assert g.log2_prob(s) == pytest.approx(math.log2(p))


def test_toy_grammar_rate_matches_a_long_monte_carlo_estimate():
    g = L.toy_grammar()
    text = g.sample(20_000, torch.Generator().manual_seed(0))
    bits = torch.tensor([-g.log2_prob(s) for s in text], dtype=torch.float64)
    chars = torch.tensor([len(s) for s in text], dtype=torch.float64)
    rate = bits.sum() / chars.sum()
    # the ratio estimator's standard error by the delta method
    se = ((bits - rate * chars).std() / chars.mean() / math.sqrt(len(text))).item()
    assert abs(rate.item() - g.entropy_rate()) < 4 * se
    assert 0.3 < g.entropy_rate() < 1.0  # the grammar's design: about half a bit a character
    assert max(chars) <= g.max_characters()


def test_toy_grammar_agreement_is_in_the_probabilities():
    g = L.toy_grammar()
    assert g.log2_prob("the cat sees a dog.") > -math.inf
    assert g.log2_prob("the cats see a dog.") > -math.inf
    for wrong in ("the cat see a dog.", "a cats see the dog.", "the cat sees a dog",
                  "the cat sees  a dog.", "the cat sees a dog. ", "the cat sees a dog.dog.",
                  "", ".", "the cat sees a dog today again.",
                  "the cat sees a dog . a cat sees a dog."):
        assert g.log2_prob(wrong) == -math.inf, wrong
    assert set(g.alphabet) >= set("the cats see a dog.")


def test_sampling_is_reproducible_and_in_the_language():
    g = L.toy_grammar()
    a = g.sample(50, torch.Generator().manual_seed(3))
    assert a == g.sample(50, torch.Generator().manual_seed(3))
    assert all(g.log2_prob(s) > -math.inf for s in a)
    assert len(set(a)) > 40  # about 13.5 bits a sentence: repeats are rare
    with pytest.raises(ArgumentError, match="draw in batches"):
        g.sample(L.MAX_SENTENCES + 1)


@pytest.mark.parametrize("rules, words", [
    ({"s": ((".", 1.0, END),)}, "'start'"),
    ({L.START: (("a", 0.5, "x"), ("a", 0.5, "x")), "x": ((".", 1.0, END),)}, "unifilar"),
    ({L.START: (("a", 0.4, "x"),), "x": ((".", 1.0, END),)}, "sum to 1"),
    ({L.START: (("a", 1.0, END),)}, "ends a sentence"),
    ({L.START: ((".", 1.0, "x"),), "x": ((".", 1.0, END),)}, "ends a sentence"),
    ({L.START: (("a", 1.0, "nowhere"),)}, "listed state"),
    ({L.START: (("A", 1.0, "x"),), "x": ((".", 1.0, END),)}, "lowercase"),
    ({L.START: (("a", 1.0, "x"),), "x": (("b", 0.5, L.START), (".", 0.5, END))}, "acyclic"),
])
def test_bad_grammars_are_refused_by_what_is_wrong(rules, words):
    with pytest.raises(ArgumentError, match=words):
        L.Grammar(rules)


def test_tokenizer_round_trip_padding_and_refusals():
    g = L.toy_grammar()
    tok = L.CharTokenizer(g.alphabet)
    text = g.sample(8, torch.Generator().manual_seed(1))
    ids = tok.encode(text, g.max_characters())
    assert ids.shape == (8, g.max_characters()) and ids.dtype == torch.long
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(g.alphabet) + 1 and ids.max() == tok.pad == tok.vocab_size - 1
    with pytest.raises(ArgumentError, match=r"does not know: 'QZ'"):
        tok.encode("the Q cat Z.", 20)
    with pytest.raises(ArgumentError, match="more than length = 5"):
        tok.encode("the cat.", 5)
    with pytest.raises(ArgumentError, match=r"masked position, -1"):
        tok.decode(torch.tensor([[0, -1]]))
    with pytest.raises(ArgumentError, match="distinct"):
        L.CharTokenizer("abca")


def test_normalize_keeps_the_alphabet_only():
    assert L.normalize("Hello,\n  World!  It's 3 o'clock.") == "hello, world it's o'clock."
    assert set(L.normalize("ÀB-c_d\tE")) <= set(L.ENGLISH_ALPHABET)


def test_english_text_offline_is_the_python_docs(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("no download when download=False")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    text, source = L.english_text(download=False, root=tmp_path)
    assert "Python documentation" in source and len(text) > 100_000
    assert set(text) <= set(L.ENGLISH_ALPHABET)
    assert "the " in text and "  " not in text


def test_english_text_reads_a_downloaded_copy_and_falls_back(monkeypatch, tmp_path):
    def fails(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", fails)
    text, source = L.english_text(download=True, root=tmp_path)
    assert "download failed: network unreachable" in source and len(text) > 100_000
    copy = "First Citizen:\nBefore we proceed.\n"
    (tmp_path / "tinyshakespeare.txt").write_text(copy)
    # a whole copy, in small
    monkeypatch.setattr(L, "SHAKESPEARE_BYTES", len(copy), raising=False)
    text, source = L.english_text(download=True, root=tmp_path)
    assert text == "first citizen before we proceed." and "Tiny Shakespeare" in source


@pytest.fixture(scope="module")
def toy_sentences():
    """The toy grammar and its whole language, enumerated once for the tests below."""
    g = L.toy_grammar()
    return g, g.enumerate()


def test_enumeration_is_the_whole_language(toy_sentences):
    g, sentences = toy_sentences
    assert len(sentences) == g.count() == len({s for s, _ in sentences})
    assert math.fsum(2.0 ** lp for _, lp in sentences) == pytest.approx(1.0, abs=1e-12)
    for s, lp in sentences[::20_000]:
        assert g.log2_prob(s) == pytest.approx(lp)
    with pytest.raises(ArgumentError, match="more than limit = 1,000"):
        g.enumerate(limit=1000)


def test_fill_posterior_uses_both_sides(toy_sentences):
    g, sentences = toy_sentences
    law = g.fill_posterior("the cat sees a dog.", 4, 7, sentences)
    # the right side's "sees" rules out plural nouns; "the" and the length leave four nouns
    assert set(law) == {"cat", "dog", "fox", "cow"}
    assert sum(law.values()) == pytest.approx(1.0)
    brute = {f: 2.0 ** g.log2_prob(f"the {f} sees a dog.") for f in law}
    total = sum(brute.values())
    for f, p in law.items():
        assert p == pytest.approx(brute[f] / total)
    plural = g.fill_posterior("the cats see a dog.", 4, 8, sentences)
    assert all(f.endswith("s") for f in plural)
    with pytest.raises(ArgumentError, match="one the grammar writes"):
        g.fill_posterior("the cat see a dog.", 4, 7, sentences)
    with pytest.raises(ArgumentError, match="non-empty span"):
        g.fill_posterior("the cat sees a dog.", 7, 7, sentences)


def test_encode_refuses_a_length_past_its_bound_before_allocating():
    """Issue 96: length 10^12 failed in the allocator, naming no argument."""
    tok = L.CharTokenizer("ab")
    with pytest.raises(ArgumentError, match=r"^length must be at most 100,000,000, got "
                                            r"1,000,000,000,000: the ids are one int64"):
        tok.encode("ab", 10**12)
    with pytest.raises(ArgumentError, match=r"^len\(texts\) x length \(the ids returned\) "
                                            r"must be at most 100,000,000, got "
                                            r"1,000,000,000: .*in batches"):
        tok.encode(["ab"] * 1000, 10**6)
    assert tok.encode(["ab", "b"], 3).tolist() == [[0, 1, 2], [1, 2, 2]]


# --- issue 96: what a careless reader (or a kill) gives the text and the grammar -------------
SMALL = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


class Response:
    """What urlopen returns, holding `data` (a download that may stop short)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, n=-1):
        return self.data[:n] if n >= 0 else self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def small_shakespeare(monkeypatch):
    """Tiny Shakespeare in small: SMALL stands for the whole file; urlopen serves it."""
    monkeypatch.setattr(L, "SHAKESPEARE_BYTES", len(SMALL), raising=False)
    served = {"data": SMALL.encode()}
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Response(served["data"]))
    return served


def test_english_text_downloads_whole_and_atomically(small_shakespeare, tmp_path):
    text, source = L.english_text(download=True, root=tmp_path)
    assert text == L.normalize(SMALL) and source == "Tiny Shakespeare (downloaded)"
    assert (tmp_path / "tinyshakespeare.txt").read_text() == SMALL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tinyshakespeare.txt"]


def test_english_text_keeps_no_cut_off_download(small_shakespeare, tmp_path):
    """A download that stops short is not kept (it fell back, and the next call read the
    third of the file it had written as the corpus)."""
    small_shakespeare["data"] = SMALL.encode()[:20]
    text, source = L.english_text(download=True, root=tmp_path)
    assert f"got 20 bytes, not Tiny Shakespeare's {len(SMALL)}" in source
    assert "Python documentation" in source and not list(tmp_path.iterdir())


def test_english_text_killed_mid_write_leaves_no_file(small_shakespeare, tmp_path,
                                                      monkeypatch):
    def killed(fd):
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM's handler, inside the write

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        L.english_text(download=True, root=tmp_path)
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary one


@pytest.mark.parametrize("content, words", [
    (SMALL.encode()[:30], r"holds 30 bytes, not Tiny Shakespeare's \d+: a download cut off"),
    (b"", r"holds 0 bytes, .*: an empty file; delete it, and english_text\(download=True\)"),
    (SMALL.encode("utf-16")[:len(SMALL)], r"is not UTF-8 text \(byte 0 cannot be decoded"),
])
def test_english_text_refuses_a_damaged_copy_by_name(small_shakespeare, tmp_path, content,
                                                     words):
    path = tmp_path / "tinyshakespeare.txt"
    path.write_bytes(content)
    for download in (True, False):
        with pytest.raises(CorruptDataError, match=words) as err:
            L.english_text(download=download, root=tmp_path)
        assert str(path) in str(err.value)
    assert path.read_bytes() == content  # the reader decides: nothing deleted behind them


def test_grammar_refuses_nan_probabilities():
    with pytest.raises(ArgumentError, match=r"^state 'start': the probability of 'a' must be "
                                            r"a finite number in \(0, 1\], got nan"):
        L.Grammar({L.START: (("a", float("nan"), "x"), (".", 0.5, END)),
                   "x": ((".", 1.0, END),)})


def test_the_empty_sentence_counts_its_period():
    """"." alone is a sentence of one character: rate 1 bit / 1.5 characters, not 1 / 1."""
    g = L.Grammar({L.START: (("a", 0.5, "x"), (".", 0.5, END)), "x": ((".", 1.0, END),)})
    sentences = enumerate_sentences(g)
    assert sorted(sentences) == [(".", 0.5), ("a.", 0.5)]
    assert g.mean_characters() == sum(p * len(s) for s, p in sentences) == 1.5
    assert g.entropy_rate() == pytest.approx(2 / 3)
    assert g.max_characters() == 2 and g.log2_prob(".") == -1.0
    only = L.Grammar({L.START: ((".", 1.0, END),)})  # says nothing, certainly: 0 bits
    assert (only.entropy_rate(), only.mean_characters(), only.max_characters()) == (0, 1, 1)


@pytest.mark.parametrize("sentence, words", [
    (["the cat sees a dog."], r"^sentence must be one sentence, a str, got a list: pass one"),
    (b"the cat sees a dog.", r"^sentence must be one sentence, a str, got a bytes: decode it"),
    (None, r"^sentence must be one sentence, a str, got None"),
])
def test_log2_prob_refuses_what_is_not_a_str(sentence, words):
    g = L.toy_grammar()
    for call in (g.log2_prob, g.words, lambda s: g.fill_posterior(s, 4, 7)):
        with pytest.raises(ArgumentError, match=words):
            call(sentence)


def test_fill_posterior_refuses_bools_and_log2_probs_not_the_grammars(toy_sentences):
    g, sentences = toy_sentences
    s = "the cat sees a dog."
    with pytest.raises(ArgumentError, match=r"^start must be a whole number >= 0, got True"):
        g.fill_posterior(s, True, 7, sentences)
    with pytest.raises(ArgumentError, match=r"^stop must be a whole number >= 0, got 7.0"):
        g.fill_posterior(s, 4, 7.0, sentences)
    flat = [(t, 0.0) for t, _ in sentences]  # made-up log2 P: the law was uniform
    with pytest.raises(ArgumentError, match=r"^sentences gives '.*' the log2-probability "
                                            r"0.0, where this grammar gives it -\d"):
        g.fill_posterior(s, 4, 7, flat)
    with pytest.raises(ArgumentError, match=r"^sentences must be enumerate\(\)'s list, one "
                                            r"\(sentence, log2 P\) per sentence of the "
                                            r"grammar \(190,512\), got 2 entries"):
        g.fill_posterior(s, 4, 7, sentences[:2])
    assert g.fill_posterior(s, 4, 7, sentences) == g.fill_posterior(s, 4, 7)


def test_decode_refuses_a_bool_tensor():
    tok = L.CharTokenizer("ab")
    with pytest.raises(ArgumentError, match=r"^ids must be an integer tensor \(B, L\) of "
                                            r"token ids, got torch.bool .*a mask\?"):
        tok.decode(torch.tensor([[True, False]]))
    assert tok.decode(torch.tensor([[1, 0, 2]], dtype=torch.uint8)) == ["ba"]
