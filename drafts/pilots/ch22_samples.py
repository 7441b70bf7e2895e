import math, time, torch
from companion import recipes, masked
from companion.models.text_transformer import ar_sample
from companion.run.profiles import get_profile
torch.set_num_threads(2)
p = get_profile("cpu"); text = recipes.toy_text(p)
g, tok, V = text["grammar"], text["tokenizer"], text["tokenizer"].vocab_size
L = text["train"].shape[1]
models = {k: recipes.lm_model(text["train"], V, p, "cpu", kind=k)[0] for k in recipes.LM_KINDS}
truth = -sum(g.log2_prob(s) for s in text["test_sentences"]) / text["characters"]
for k, m in models.items():
    bits = recipes.lm_bits(m, text["test"], n_t=32, generator=torch.Generator().manual_seed(0))
    print(f"{k}: {bits.sum().item() / text['characters']:.3f} bits/char (truth {truth:.3f})", flush=True)
def judge(ids, name, sec):
    ok, lp, out = 0, [], []
    for row in ids.tolist():
        cut = row.index(tok.pad) if tok.pad in row else len(row)
        if any(i != tok.pad for i in row[cut:]):
            out.append(None); continue
        s = "".join(tok.alphabet[i] for i in row[:cut]); out.append(s)
        l2 = g.log2_prob(s)
        if l2 > -math.inf: ok += 1; lp.append(l2)
    valid = [s for s in out if s is not None and g.log2_prob(s) > -math.inf]
    print(f"{name:28s} valid {ok/len(ids):.2f}  mean log2P {sum(lp)/max(len(lp),1):7.2f}  distinct {len(set(valid))/max(len(valid),1):.2f}  {sec*1000/len(ids):.1f} ms/sample  e.g. {out[0]!r}", flush=True)
n = 200
t0 = time.perf_counter(); ids = ar_sample(models["autoregressive"], n, L, generator=torch.Generator().manual_seed(0)); judge(ids, "autoregressive (44 calls)", time.perf_counter() - t0)
for order in ("random", "confidence"):
    for K in (1, 4, 11, 22, 44):
        t0 = time.perf_counter()
        with torch.no_grad():
            ids = masked.sample(models["masked"], (n, L), K, order=order, categories=V, generator=torch.Generator().manual_seed(0))
        judge(ids, f"masked {order} K={K}", time.perf_counter() - t0)
truthS = g.sample(n, torch.Generator().manual_seed(5))
print("grammar's own samples: mean log2P", sum(g.log2_prob(s) for s in truthS) / n, "distinct", len(set(truthS)) / n)
