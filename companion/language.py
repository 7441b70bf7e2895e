"""Text for chapter 22: a toy language whose entropy rate is known exactly, characters as
tokens, and real English.

A `Grammar` is a probabilistic finite-state grammar over words. From state s it emits word w
with probability P(w | s) and moves to the state next(s, w); a sentence starts in `START`
and ends with the word "." (written without a space before it). It is unifilar (within a
state the words differ, so the states are read off the words) and acyclic (every sentence
ends in a bounded number of words), so everything about it is exact:

    H(sentence) = sum_s v(s) H(P(. | s))            v(s): probability a sentence visits s
    E[characters] = sum_s v(s) E_{w ~ P(. | s)}[len(w) + 1]   (the space or "." after w;
                    "." itself counts 1 only as the whole, empty, sentence)
    entropy rate = H(sentence) / E[characters]   bits per character            (ch22-rate)

The ratio is the rate of a long text of independent sentences (renewal-reward), and the
entropy of a sentence in characters equals its entropy in words because the words are read
back from the characters. `log2_prob` of any string is exact too, by parsing it.

`CharTokenizer` maps characters to token ids 0..V-1 (V - 1 is padding) and refuses a
character it does not know by name. `english_text` is real text on every machine: the
Python documentation's help topics that the standard library ships (`pydoc_data`, under the
PSF licence), or, where downloads are allowed and asked for, Tiny Shakespeare (Karpathy's
char-rnn data), falling back to the first when the download fails.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .run import checks

START, END = "start", None
MAX_SENTENCES = 10_000_000  # a list of strings of about 30 characters each: ~1 GB
PERIOD = "."


@dataclass(frozen=True)
class Grammar:
    """rules: {state: ((word, probability, next state or END), ...)}; "." must lead to END
    and every other word to a state, so that a sentence is words then "."."""

    rules: dict

    def __post_init__(self):
        if START not in self.rules:
            raise checks.ArgumentError(f"rules must have the state {START!r} where every "
                                       f"sentence begins, got states {sorted(self.rules)}")
        for s, options in self.rules.items():
            words = [w for w, _, _ in options]
            if len(set(words)) != len(words):
                raise checks.ArgumentError(f"state {s!r} lists a word twice: the grammar "
                                           "must be unifilar (its words differ)")
            for w, p, _ in options:  # NaN passed the sum check below (NaN > x is False)
                checks.real(f"state {s!r}: the probability of {w!r}", p, low=0.0, high=1.0,
                            open_low=True)
            total = sum(p for _, p, _ in options)
            if abs(total - 1) > 1e-9:
                raise checks.ArgumentError(f"state {s!r}: probabilities must be positive "
                                           f"and sum to 1, got a sum of {total}")
            for w, _, nxt in options:
                if (w == PERIOD) != (nxt is END) or (nxt is not END and nxt not in
                                                      self.rules):
                    raise checks.ArgumentError(f"state {s!r}: word {w!r} leads to {nxt!r}; "
                                               f"'.' ends a sentence (next None) and every "
                                               f"other word leads to a listed state")
                if w != PERIOD and not re.fullmatch(r"[a-z]+", w):
                    raise checks.ArgumentError(f"word {w!r}: words are lowercase letters")
        self.visits()  # refuses a cycle

    @property
    def alphabet(self) -> str:
        """Every character a sentence can hold: its letters, the space and "."."""
        letters = {c for opts in self.rules.values() for w, _, _ in opts for c in w}
        return "".join(sorted(letters - {PERIOD})) + " " + PERIOD

    def visits(self) -> dict:
        """v(s): the probability that a sentence passes through state s, for every state
        (forward over the states in topological order)."""
        order, seen, busy = [], set(), set()

        def visit(s):
            if s in busy:
                raise checks.ArgumentError(f"the grammar loops through state {s!r}: it must "
                                           "be acyclic, so that every sentence ends")
            if s in seen:
                return
            busy.add(s)
            for _, _, nxt in self.rules[s]:
                if nxt is not END:
                    visit(nxt)
            busy.discard(s)
            seen.add(s)
            order.append(s)

        visit(START)
        v = dict.fromkeys(self.rules, 0.0)
        v[START] = 1.0
        for s in reversed(order):
            for _, p, nxt in self.rules[s]:
                if nxt is not END:
                    v[nxt] += v[s] * p
        return v

    def sentence_entropy(self) -> float:
        """H(sentence) in bits. Book: :eq:`ch22-rate`."""
        v = self.visits()
        return sum(v[s] * -sum(p * math.log2(p) for _, p, _ in opts)
                   for s, opts in self.rules.items())

    def mean_characters(self) -> float:
        """E[number of characters of a sentence]: each word and the character after it (a
        space, or "." after the last word); the empty sentence "." has one."""
        v = self.visits()
        return sum(v[s] * sum(p * _width(s, w) for w, p, _ in opts)
                   for s, opts in self.rules.items())

    def entropy_rate(self) -> float:
        """Bits per character of a long text of independent sentences. Book: :eq:`ch22-rate`."""
        return self.sentence_entropy() / self.mean_characters()

    def max_characters(self) -> int:
        """The longest sentence's length in characters."""
        memo: dict = {}

        def longest(s):
            if s not in memo:
                memo[s] = max(_width(s, w) + (0 if nxt is END else longest(nxt))
                              for w, _, nxt in self.rules[s])
            return memo[s]

        return longest(START)

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        """n independent sentences, e.g. "the small cats see a dog.". One uniform number a
        word, all drawn at once from `generator`, each turned into a word by the state's
        cumulative probabilities."""
        n = checks.count("n", n)
        checks.generator("generator", generator)
        if n > MAX_SENTENCES:
            raise checks.ArgumentError(f"n = {n:,} sentences is more than {MAX_SENTENCES:,} "
                                       "at once: draw in batches")
        cumulative = {s: list(itertools.accumulate(p for _, p, _ in opts))
                      for s, opts in self.rules.items()}
        u = torch.rand(n, self.max_words(), generator=generator, dtype=torch.float64)
        out = []
        for row in u.tolist():
            s, words = START, []
            for draw in row:
                opts = self.rules[s]
                k = min(bisect.bisect_right(cumulative[s], draw), len(opts) - 1)
                words.append(opts[k][0])
                s = opts[k][2]
                if s is END:
                    break
            out.append(" ".join(words[:-1]) + PERIOD)
        return out

    def max_words(self) -> int:
        """The most words (with ".") a sentence has."""
        memo: dict = {}

        def most(s):
            if s not in memo:
                memo[s] = 1 + max(0 if nxt is END else most(nxt) for _, _, nxt in self.rules[s])
            return memo[s]

        return most(START)

    def count(self) -> int:
        """How many different sentences the grammar writes."""
        memo: dict = {}

        def n(s):
            if s not in memo:
                memo[s] = sum(1 if nxt is END else n(nxt) for _, _, nxt in self.rules[s])
            return memo[s]

        return n(START)

    def enumerate(self, limit: int = 1_000_000) -> list[tuple[str, float]]:
        """Every sentence with its log2-probability, [(sentence, log2 P)], for grammars of
        at most `limit` sentences (the toy's 190,512 take about a second)."""
        limit = checks.count("limit", limit)
        if self.count() > limit:
            raise checks.ArgumentError(f"the grammar writes {self.count():,} sentences, more "
                                       f"than limit = {limit:,}: raise the limit or sample")
        out = []

        def walk(s, words, logp):
            for w, p, nxt in self.rules[s]:
                if nxt is END:
                    out.append((" ".join(words) + PERIOD, logp + math.log2(p)))
                else:
                    walk(nxt, [*words, w], logp + math.log2(p))

        walk(START, [], 0.0)
        return out

    def fill_posterior(self, sentence: str, start: int, stop: int,
                       sentences: list[tuple[str, float]] | None = None) -> dict[str, float]:
        """The exact law of sentence[start:stop] given the characters on both sides,
        {fill: probability} over the fills of that length that make a sentence: what an
        infilling model should match. sentences: `enumerate()`'s list, to reuse it (checked:
        one entry per sentence of the grammar, and the log2-probabilities of those that
        fit the span this grammar's)."""
        if self.log2_prob(sentence) == -math.inf:
            raise checks.ArgumentError(f"sentence must be one the grammar writes, got "
                                       f"{sentence!r}")
        # a bool is an int to Python: True read as 1
        start, stop = (checks.count(k, v, minimum=0) for k, v in (("start", start),
                                                                   ("stop", stop)))
        if not 0 <= start < stop <= len(sentence):
            raise checks.ArgumentError(f"start and stop must cut a non-empty span of the "
                                       f"{len(sentence)} characters, 0 <= start < stop <= "
                                       f"{len(sentence)}, got {start!r} and {stop!r}")
        left, right = sentence[:start], sentence[stop:]
        hits = [(t, lp) for t, lp in (self.enumerate() if sentences is None
                                      else self._enumerated(sentences))
                if len(t) == len(sentence) and t.startswith(left) and t.endswith(right)]
        if sentences is not None:
            if not hits:  # the sentence itself fits: a list without it is not the language
                raise checks.ArgumentError(f"sentences lacks {sentence!r}: pass this "
                                           "grammar's enumerate() list")
            self._log2_probs("sentences", hits)
        hits = [(t[start:stop], lp) for t, lp in hits]
        top = max(lp for _, lp in hits)
        weights = {f: 2.0 ** (lp - top) for f, lp in hits}
        total = sum(weights.values())
        return {f: w / total for f, w in sorted(weights.items(), key=lambda kv: -kv[1])}

    def _enumerated(self, sentences) -> list:
        """`sentences` as a list if it holds as many entries as the grammar has sentences
        (fewer made fill_posterior's law a law over some of them)."""
        sentences = checks.sequence("sentences", sentences, "g.enumerate()")
        if len(sentences) != self.count():
            raise checks.ArgumentError(
                f"sentences must be enumerate()'s list, one (sentence, log2 P) per sentence "
                f"of the grammar ({self.count():,}), got {len(sentences):,} entries: pass "
                "g.enumerate(), or None to enumerate here")
        return sentences

    def _log2_probs(self, name: str, pairs) -> None:
        """Each (sentence, log2 P) of `pairs` with this grammar's log2 P (to 1e-9): a list
        of another grammar's, or of made-up values (0.0 each), made fill_posterior return a
        law that is not the grammar's (a uniform one)."""
        for t, lp in pairs:
            want = self.log2_prob(t)
            got = checks.as_float(lp)
            if not isinstance(got, float) or not abs(got - want) <= 1e-9:
                raise checks.ArgumentError(
                    f"{name} gives {t!r} the log2-probability {lp!r}, where this grammar "
                    f"gives it {want:.6g}: {name} must be this grammar's enumerate() list "
                    "(log2 P of each sentence, 2^log2 P summing to 1 over them)")

    def words(self, sentence: str) -> list[str] | None:
        """The words of a sentence ("." last), or None if it is not one this grammar can
        write (wrong spacing, no final "." or text after it); a sentence that is not a str
        is refused."""
        checks.text("sentence", sentence, "one sentence, a str")
        if not sentence.endswith(PERIOD):
            return None
        body = sentence[:-1]
        words = body.split(" ") if body else []
        return None if "" in words else [*words, PERIOD]

    def log2_prob(self, sentence: str) -> float:
        """log2 P(sentence), exact; -inf for a string the grammar never writes (a list or
        bytes is refused: a str is the one kind of sentence)."""
        words = self.words(sentence)
        if words is None:
            return -math.inf
        s, total = START, 0.0
        for w in words:
            if s is END:
                return -math.inf
            hit = [(p, nxt) for word, p, nxt in self.rules[s] if word == w]
            if not hit:
                return -math.inf
            total += math.log2(hit[0][0])
            s = hit[0][1]
        return total  # the last word is ".", which always ends the sentence


def _width(state, word: str) -> int:
    """The characters `word`, said in `state`, adds to a sentence: the word and the space or
    "." after it, so "." adds none, except as the whole sentence: "." said at START (the
    start is never entered again: the grammar is acyclic) is the empty sentence, one
    character. Counted as 0 there, a grammar that can say nothing had a rate of 1.0 bits a
    character where it is 0.667, and one that says only "." divided by zero."""
    if word == PERIOD:
        return 1 if state == START else 0
    return len(word) + 1


def _zipf(options, scale=1.0):
    """((word, p, next state), ...) from (word, next state) pairs, p proportional to
    1 / rank (Zipf's law) and summing to scale."""
    weights = [1 / (k + 1) for k in range(len(options))]
    return tuple((w, scale * q / sum(weights), nxt)
                 for (w, nxt), q in zip(options, weights, strict=True))


def toy_grammar() -> Grammar:
    """The book's toy English: "[the|a] (adjective) noun verb [the|a] (adjective) noun
    (adverb)." with number agreement. "a" takes a singular noun, a singular subject takes
    "sees", a plural one "see": the right-hand context says which noun fits a gap."""
    adjectives = ("small", "big", "red", "old", "quick", "lazy")
    nouns = ("cat", "dog", "bird", "fox", "cow", "frog")
    plural = {n: n + ("es" if n.endswith("x") else "s") for n in nouns}
    verbs_sg, verbs_pl = ("sees", "likes", "chases", "hears"), ("see", "like", "chase",
                                                                  "hear")
    rules = {}
    for side, first in (("s", START), ("o", "odet")):
        rules[first] = (("the", 0.6, f"{side}any"), ("a", 0.4, f"{side}one"))
        for kind in ("any", "one"):
            forms = [(n, "sg") for n in nouns]
            if kind == "any":
                forms += [(plural[n], "pl") for n in nouns]
            nouns_here = [(w, f"s{num}" if side == "s" else "end") for w, num in forms]
            adj = _zipf([(a, f"{side}{kind}adj") for a in adjectives], 0.3)
            rules[f"{side}{kind}"] = adj + _zipf(nouns_here, 0.7)
            rules[f"{side}{kind}adj"] = _zipf(nouns_here)
    rules["ssg"] = _zipf([(v, "odet") for v in verbs_sg])
    rules["spl"] = _zipf([(v, "odet") for v in verbs_pl])
    rules["end"] = ((PERIOD, 0.7, END), ("today", 0.2, "adv"), ("again", 0.1, "adv"))
    rules["adv"] = ((PERIOD, 1.0, END),)
    return Grammar(rules)


MAX_IDS = 10**8  # CharTokenizer.encode's B x length: 800 MB of int64 ids
IDS_WHY = ("the ids are one int64 (8 bytes) a position, padded to length: 10^8 of them take "
           "800 MB (the chapter's largest text has 1.1 million characters)")


class CharTokenizer:
    """Characters <-> token ids: the alphabet's characters are 0..len-1, padding is the
    last id (V - 1, V = len(alphabet) + 1)."""

    def __init__(self, alphabet: str):
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise checks.ArgumentError(f"alphabet must be a non-empty string of distinct "
                                       f"characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}
        self.pad = len(alphabet)
        self.vocab_size = len(alphabet) + 1

    def encode(self, texts, length: int) -> torch.Tensor:
        """texts (a string or a list of them) -> (B, length) long, each padded at the end;
        B x length at most MAX_IDS = 10^8 (the chapter's largest: one text of Tiny
        Shakespeare's 1.1 million characters)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = checks.size("length", length, MAX_IDS, IDS_WHY)
        checks.size("len(texts) x length (the ids returned)", len(texts) * length, MAX_IDS,
                    IDS_WHY + "; encode the texts in batches", minimum=0)
        out = torch.full((len(texts), length), self.pad, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise checks.ArgumentError(f"texts must be strings, got {type(text).__name__} "
                                           f"at position {i}")
            unknown = sorted(set(text) - set(self.index))
            if unknown:
                raise checks.ArgumentError(f"text {i} has characters the tokenizer does not "
                                           f"know: {''.join(unknown)!r}; its alphabet is "
                                           f"{self.alphabet!r} (normalize the text first, "
                                           f"e.g. with `normalize`)")
            if len(text) > length:
                raise checks.ArgumentError(f"text {i} has {len(text)} characters, more than "
                                           f"length = {length}: cut it or raise the length")
            out[i, :len(text)] = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """(B, L) ids -> B strings, padding dropped; an id outside 0..V-1 is refused."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 2 or ids.is_floating_point() or ids.is_complex() or \
                ids.dtype == torch.bool:  # a bool mask read as ids 0 and 1
            raise checks.ArgumentError(f"ids must be an integer tensor (B, L) of token ids, "
                                       f"got {ids.dtype} of shape {tuple(ids.shape)}"
                                       + (": a mask? decode the ids it selects, or convert "
                                          "0/1 ids with ids.long()"
                                          if ids.dtype == torch.bool else ""))
        if len(ids) and ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise checks.ArgumentError(f"ids must lie in 0..{self.vocab_size - 1}, got "
                                       f"{int(ids.min())}..{int(ids.max())} (a masked "
                                       f"position, -1, is not a character)")
        return ["".join(self.alphabet[i] for i in row if i != self.pad) for row in ids.tolist()]


ENGLISH_ALPHABET = "abcdefghijklmnopqrstuvwxyz .,'"
SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")


def normalize(text: str, alphabet: str = ENGLISH_ALPHABET) -> str:
    """Lower case, every run of other characters or white space made one space."""
    keep = re.escape("".join(c for c in alphabet if c != " "))
    return re.sub(rf"[^{keep}]+", " ", text.lower()).strip()


def _python_docs() -> str:
    """The prose of the standard library's help topics (indented lines, the code and the
    grammar rules, left out)."""
    import pydoc_data.topics as topics

    lines = [ln for t in topics.topics.values() for ln in t.splitlines()
             if ln and not ln[0].isspace() and not set(ln) <= set("*=-")]
    return " ".join(lines)


def english_text(download: bool | None = None, root: str | Path | None = None,
                 timeout: float = 20.0) -> tuple[str, str]:
    """(normalized text, where it came from). download: fetch Tiny Shakespeare (about 1 MB)
    into root (default: the book's data folder) if not there yet (default: unless
    $BOOK_OFFLINE is set); without it, or when the download fails, the Python
    documentation's help topics that every Python installs.

    The download is checked (its SHAKESPEARE_BYTES bytes, UTF-8) and written atomically
    (`replace_file`), and a copy already there is read only if it has those bytes: a
    download killed mid-write or an empty file is refused by name (CorruptDataError, which
    says to delete it), never read as the corpus."""
    from .data import default_root, downloads_allowed

    download = downloads_allowed() if download is None else bool(download)
    path = Path(root) if root is not None else default_root()
    path = path / "tinyshakespeare.txt"
    if path.exists():
        return normalize(_read_shakespeare(path)), f"Tiny Shakespeare ({path})"
    if download:
        from .run.checkpoint import replace_file

        try:
            raw = _fetch_shakespeare(timeout)
            replace_file(path, raw)
            return normalize(raw.decode("utf-8")), "Tiny Shakespeare (downloaded)"
        except (OSError, UnicodeDecodeError) as err:
            note = f" (the download failed: {str(err)[:80]})"
    else:
        note = ""
    return normalize(_python_docs()), "the Python documentation's help topics" + note


# Tiny Shakespeare's size in bytes (ASCII: as many characters; Karpathy's input.txt, as
# nanoGPT's shakespeare_char counts it): a copy of any other size was cut off or is another
# file. The book's url has served this one file since 2015.
SHAKESPEARE_BYTES = 1_115_394


def _fetch_shakespeare(timeout: float) -> bytes:
    """Tiny Shakespeare's bytes from SHAKESPEARE_URL, checked: OSError for a cut-off or
    other download, UnicodeDecodeError for bytes that are not UTF-8 text."""
    import urllib.request

    with urllib.request.urlopen(SHAKESPEARE_URL, timeout=timeout) as response:
        raw = response.read(SHAKESPEARE_BYTES + 1)
    if len(raw) != SHAKESPEARE_BYTES:
        raise OSError(f"got {len(raw):,} bytes, not Tiny Shakespeare's {SHAKESPEARE_BYTES:,}")
    raw.decode("utf-8")  # before it is kept
    return raw


def _read_shakespeare(path: Path) -> str:
    """The text of the copy at `path`, if it is whole: SHAKESPEARE_BYTES bytes of UTF-8."""
    from .data import CorruptDataError

    fix = ("delete it, and english_text(download=True) fetches it again (or put Karpathy's "
           f"input.txt there: {SHAKESPEARE_URL})")
    size = path.stat().st_size
    if size != SHAKESPEARE_BYTES:
        raise CorruptDataError(
            f"{path} holds {size:,} bytes, not Tiny Shakespeare's {SHAKESPEARE_BYTES:,}: "
            f"{'an empty file' if size == 0 else 'a download cut off, or another file'}; "
            f"{fix}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptDataError(
            f"{path} is not UTF-8 text (byte {err.start} cannot be decoded as UTF-8: "
            f"{err.reason}); Tiny Shakespeare is plain ASCII: {fix}") from None
