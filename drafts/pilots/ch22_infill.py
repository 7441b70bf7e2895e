import math, torch
from companion import recipes, masked
from companion.run.profiles import get_profile
torch.set_num_threads(2)
p = get_profile("cpu"); text = recipes.toy_text(p)
g, tok, V = text["grammar"], text["tokenizer"], text["tokenizer"].vocab_size
den = recipes.lm_model(text["train"], V, p, "cpu", kind="masked")[0]
S = g.enumerate()
# the gap: the second word of sentences whose second word has 3 letters (cat, dog, fox, cow, red, old, big)
rows = [s for s in text["test_sentences"] if len(s.split(" ")[1]) == 3][:150]
start, stop = [len(s.split(" ")[0]) + 1 for s in rows], None
res = {}
for order in ("random", "confidence"):
    for K in (1, 3):
        H, nll, valid = [], [], 0
        for s in rows:
            a = len(s.split(" ")[0]) + 1; b = a + 3
            law = g.fill_posterior(s, a, b, S)
            ids = tok.encode([s], text["train"].shape[1])
            ids[0, a:b] = -1
            n = 20
            with torch.no_grad():
                out = masked.sample(den, (n, ids.shape[1]), K, order=order, categories=V, given=ids.expand(n, -1), generator=torch.Generator().manual_seed(0))
            fills = ["".join(tok.alphabet[i] if i < len(tok.alphabet) else "_" for i in r[a:b]) for r in out.tolist()]
            H.append(-sum(q * math.log2(q) for q in law.values()))
            for f in fills:
                if f in law: valid += 1; nll.append(-math.log2(law[f]))
        print(f"{order} K={K}: valid fills {valid / (20 * len(rows)):.2f}, mean -log2 q_true(fill) over valid {sum(nll)/max(len(nll),1):.2f} bits; truth's own entropy {sum(H)/len(H):.2f} bits", flush=True)
