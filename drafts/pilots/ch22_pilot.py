import math, sys, time, torch
from companion import language as Lg, masked
from companion.models.text_transformer import TextTransformer, ar_nll, flops_per_sequence
torch.set_num_threads(2); torch.manual_seed(0)
g = Lg.toy_grammar(); tok = Lg.CharTokenizer(g.alphabet); L = g.max_characters(); V = tok.vocab_size
train = tok.encode(g.sample(20000, torch.Generator().manual_seed(1)), L)
test_s = g.sample(1000, torch.Generator().manual_seed(2)); test = tok.encode(test_s, L)
chars = sum(len(s) for s in test_s)
truth = -sum(g.log2_prob(s) for s in test_s) / chars
W, D, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for causal in [c for c in (True, False) if (sys.argv[4] if len(sys.argv) > 4 else "both") in ("both", "ar" if c else "mdlm")]:
    torch.manual_seed(0)
    m = TextTransformer(vocab_size=V, length=L, width=W, depth=D, heads=4, causal=causal)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(steps):
        x = train[torch.randint(0, len(train), (64,))]
        loss = ar_nll(m, x).mean() if causal else masked.loss(m, x, categories=V)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    sec = time.perf_counter() - t0
    m.eval()
    with torch.no_grad():
        nats = ar_nll(m, test).sum() if causal else masked.negative_elbo(m, test, n_t=32, categories=V, generator=torch.Generator().manual_seed(0)).sum()
    bpc = nats.item() / math.log(2) / chars
    print(f"{'AR ' if causal else 'MDLM'} W{W} D{D} {steps} updates {sec:.0f} s: {bpc:.3f} bits/char (truth {truth:.3f} on these sentences; rate {g.entropy_rate():.3f}); {flops_per_sequence(m)/1e6:.1f} MFLOPs/seq", flush=True)
