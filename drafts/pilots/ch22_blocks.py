import math, torch
from companion import recipes, masked
from companion.run.profiles import get_profile
torch.set_num_threads(2)
p = get_profile("cpu"); text = recipes.toy_text(p)
g, tok, V = text["grammar"], text["tokenizer"], text["tokenizer"].vocab_size; L = text["train"].shape[1]
den = recipes.lm_model(text["train"], V, p, "cpu", kind="masked")[0]
def judge(ids):
    ok = []
    for row in ids.tolist():
        cut = row.index(tok.pad) if tok.pad in row else len(row)
        if all(i == tok.pad for i in row[cut:]):
            s = "".join(tok.alphabet[i] for i in row[:cut])
            if g.log2_prob(s) > -math.inf: ok.append(s)
    return len(ok) / len(ids), len(set(ok)) / max(len(ok), 1), sum(g.log2_prob(s) for s in ok) / max(len(ok), 1)
for order in masked.ORDERS:
    for K, B in ((22, 2), (44, 4), (44, 11), (44, 44)):
        with torch.no_grad():
            ids = masked.sample(den, (200, L), K, order=order, categories=V, blocks=B, generator=torch.Generator().manual_seed(0))
        v, d, lp = judge(ids)
        print(f"{order:10s} K={K} blocks={B}: sentences {v:.2f} distinct {d:.2f} log2P {lp:.2f}", flush=True)
