# chapter 21's option (c): a DiT on chapter 19's 7x7 FSQ latent grid, 1x1 patches
import copy, time, torch
import torch.nn.functional as F
from companion import recipes
from companion.data import load
from companion.models import dit
from companion.run.profiles import get_profile
from companion.models.classifier import predict
torch.set_num_threads(2); torch.manual_seed(0)
p = get_profile("cpu")
data = load("mnist", n_train=p.n_train, n_test=p.n_test, device="cpu")
judge, _ = recipes.classifier(data, p, "cpu")
vq = recipes.vqvae(data.x_train, p, "cpu", variant="fsq")[0].eval()
with torch.no_grad():
    Z = vq.quantize((data.x_train > 0.5).float())[1].z_q        # (N, 3, 7, 7)
    Zt = vq.quantize((data.x_test > 0.5).float())[1].z_q
vals = [torch.unique(Z[:, c]) for c in range(Z.shape[1])]
print("latent", tuple(Z.shape), "levels", [v.tolist() for v in vals], "std", Z.std().item())
scale = 1 / Z.std()
def snap(z):
    return torch.stack([vals[c][(z[:, c, ..., None] - vals[c]).abs().argmin(-1)] for c in range(len(vals))], 1)
def acc_of(z, y):
    with torch.no_grad():
        img = torch.sigmoid(vq.decode(z))
    return (predict(judge, img)[1].argmax(1) == y).float().mean().item()
print("real test latents decoded: judge accuracy", round(acc_of(Zt[:500], data.y_test[:500]), 3))
dit.check_patch = lambda p, H, W: int(p)          # allow 1x1 patches on the 7x7 grid
W, D, H, steps = 64, 4, 4, 2000
m = dit.DiT(patch=1, width=W, depth=D, heads=H, T=500, in_channels=3, image_size=7, num_classes=10)
print("MFLOPs/latent", round(dit.flops_per_image(m) / 1e6, 1))
ema = copy.deepcopy(m)
chain = recipes.ddpm_diffusion(p, "cpu")
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0)
X = Z * scale; Y = data.y_train
t0 = time.perf_counter(); L = []
for step in range(steps):
    i = torch.randint(0, len(X), (64,))
    y = Y[i].clone(); y[torch.rand(64) < 0.1] = -1
    eps = lambda z, t, y=y: m(z, t, y); eps.config = m.config
    loss = chain.simple_loss(eps, X[i])
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), m.parameters()): pe.lerp_(pm, 0.005)
    L.append(loss.item())
print(f"{steps} updates {time.perf_counter() - t0:.0f} s, loss {sum(L[-200:]) / 200:.4f}", flush=True)
labels = torch.arange(10).repeat_interleave(10)
f = lambda z, t: ema(z, t, labels); f.config = ema.config
with torch.no_grad():
    s = chain.sample(f, (100, 3, 7, 7), n_steps=50, generator=torch.Generator().manual_seed(1), quiet=True) / scale
print("samples decoded: judge accuracy", acc_of(s, labels), "| snapped to the levels:", acc_of(snap(s), labels), flush=True)
torch.save(torch.sigmoid(vq.decode(snap(s))).detach(), "/tmp/p8/latent_dit.pt")
