import os, sys, time, torch
from companion import recipes
from companion.data import load
from companion.models import dit
from companion.run.profiles import get_profile
from companion.models.classifier import predict, to_unit
torch.set_num_threads(2)
os.environ["BOOK_CACHE"] = "/tmp/p8/cache"
p = get_profile("cpu")
chain = recipes.ddpm_diffusion(p, "cpu")
AB = torch.as_tensor(chain.alphas_bar).float().clone()
class XPred(dit.DiT):
    """The network's output D is x0; eps = (x_t - sqrt(ab) D) / sqrt(1 - ab)."""
    def forward(self, x, t, y=None):
        D = super().forward(x, t, y)
        ab = AB.to(x.device)[t - 1].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * D) / (1 - ab).sqrt()
orig_net = recipes.ch21_network
recipes.ch21_network = lambda network, cond, profile: XPred(orig_net(network, cond, profile).config)
size = sys.argv[1] if len(sys.argv) > 1 else "M"
data = load("mnist", n_train=p.n_train, n_test=p.n_test, device="cpu")
judge, _ = recipes.classifier(data, p, "cpu")
t0 = time.perf_counter()
m, run = recipes.ch21_model(data.x_train, data.y_train, p, "cpu", network=f"dit-{size}", prefix="pilot5x")
L = run.history["loss"]
print(f"x-pred dit-{size}: {time.perf_counter()-t0:.0f} s, loss {sum(L[-200:])/200:.4f}", flush=True)
x0 = data.x_test[:200] * 2 - 1; y = data.y_test[:200]
g = torch.Generator().manual_seed(0)
for t in (5, 20, 50, 100, 150):
    ab = torch.as_tensor(chain.alphas_bar)[t - 1].float()
    e = torch.randn(x0.shape, generator=g)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * e
    with torch.no_grad():
        ed = m(xt, torch.full((200,), t), y)
    bg = (x0 < -0.99)
    print(f"t={t}: k {((ed*e).sum()/(e*e).sum()):.3f} bg k {((ed*e)[bg].sum()/(e*e)[bg].sum()):.3f} mse {((ed-e)**2).mean():.4f}")
labels = torch.arange(10).repeat_interleave(10)
f = lambda x, t: m(x, t, labels); f.config = m.config
for n in (50, 500):
    with torch.no_grad():
        s = chain.sample(f, (100, 1, 28, 28), n_steps=n, generator=torch.Generator().manual_seed(1), quiet=True)
    acc = (predict(judge, to_unit(s))[1].argmax(1) == labels).float().mean().item()
    print(f"n={n}: acc {acc:.2f}, frac<-0.9 {(s<-0.9).float().mean():.2f}", flush=True)
    torch.save(s, f"/tmp/p8/x{size}_{n}.pt")
