# an independent minimal DiT and loop, to tell a bug from a limit
import math, sys, time, copy, torch
from torch import nn
import torch.nn.functional as F
from companion import recipes
from companion.data import load
from companion.run.profiles import get_profile
from companion.models.classifier import predict, to_unit
torch.set_num_threads(2); torch.manual_seed(0)
p = get_profile("cpu")
data = load("mnist", n_train=p.n_train, n_test=p.n_test, device="cpu")
judge, _ = recipes.classifier(data, p, "cpu")
chain = recipes.ddpm_diffusion(p, "cpu")
AB = torch.as_tensor(chain.alphas_bar).float()
W, D, H, P = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps, lr = int(sys.argv[5]), float(sys.argv[6]); OV = len(sys.argv) > 7
def temb(t, dim):
    half = dim // 2
    f = torch.exp(-math.log(10000) * torch.arange(half) / half)
    a = t.float()[:, None] * f[None]
    return torch.cat([a.cos(), a.sin()], 1)
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.n1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6); s.n2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        s.attn = nn.MultiheadAttention(W, H, batch_first=True)
        s.mlp = nn.Sequential(nn.Linear(W, 4 * W), nn.GELU(approximate="tanh"), nn.Linear(4 * W, W))
        s.ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 6 * W)); nn.init.zeros_(s.ada[1].weight); nn.init.zeros_(s.ada[1].bias)
    def forward(s, x, c):
        a, b, g, a2, b2, g2 = s.ada(c)[:, None].chunk(6, -1)
        h = s.n1(x) * (1 + b) + a
        x = x + g * s.attn(h, h, h, need_weights=False)[0]
        return x + g2 * s.mlp(s.n2(x) * (1 + b2) + a2)
class Ref(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Conv2d(1, W, 2 * P, P, padding=P // 2) if OV else nn.Conv2d(1, W, P, P); N = (28 // P) ** 2
        s.pos = nn.Parameter(torch.randn(1, N, W) * 0.02)
        s.t = nn.Sequential(nn.Linear(256, W), nn.SiLU(), nn.Linear(W, W))
        s.y = nn.Embedding(11, W)
        s.blocks = nn.ModuleList(Block() for _ in range(D))
        s.nf = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        s.adaf = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W)); nn.init.zeros_(s.adaf[1].weight); nn.init.zeros_(s.adaf[1].bias)
        s.out = nn.ConvTranspose2d(W, 1, 2 * P, P, padding=P // 2) if OV else nn.Linear(W, P * P); nn.init.zeros_(s.out.weight); nn.init.zeros_(s.out.bias)
    def forward(s, x, t, y):
        B = len(x); g = 28 // P
        h = s.emb(x).flatten(2).transpose(1, 2) + s.pos
        c = s.t(temb(t, 256)) + s.y(y)
        for b in s.blocks: h = b(h, c)
        a, sc = s.adaf(c)[:, None].chunk(2, -1)
        o = s.nf(h) * (1 + sc) + a
        if OV: return s.out(o.transpose(1, 2).reshape(B, W, g, g))
        o = s.out(o)
        return o.view(B, g, g, P, P).permute(0, 1, 3, 2, 4).reshape(B, 1, 28, 28)
m = Ref(); ema = copy.deepcopy(m)
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0)
X = data.x_train * 2 - 1; Y = data.y_train
t0 = time.perf_counter(); L = []
for step in range(steps):
    i = torch.randint(0, len(X), (64,))
    x0, y = X[i], Y[i].clone(); y[torch.rand(64) < 0.1] = 10
    t = torch.randint(1, 501, (64,)); e = torch.randn_like(x0); ab = AB[t - 1].view(-1, 1, 1, 1)
    loss = F.mse_loss(m(ab.sqrt() * x0 + (1 - ab).sqrt() * e, t, y), e)
    opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), m.parameters()): pe.lerp_(pm, 0.005)
    L.append(loss.item())
print(f"ref W{W} D{D} P{P} lr{lr}: {steps} steps {time.perf_counter()-t0:.0f} s, loss {sum(L[-200:])/200:.4f}", flush=True)
labels = torch.arange(10).repeat_interleave(10)
for name, net in (("raw", m), ("ema", ema)):
    f = lambda x, t, net=net: net(x, t, labels); f.T = 500
    with torch.no_grad():
        s = chain.sample(f, (100, 1, 28, 28), n_steps=50, generator=torch.Generator().manual_seed(1), quiet=True)
    print(name, "acc", (predict(judge, to_unit(s))[1].argmax(1) == labels).float().mean().item(), flush=True)
    torch.save(s, f"/tmp/p8/ref{W}{OV}_{name}.pt")
