import os, torch, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
from companion import recipes
from companion.data import load
from companion.run.profiles import get_profile
torch.set_num_threads(2)
p = get_profile("cpu")
data = load("mnist", n_train=p.n_train, n_test=p.n_test, device="cpu")
chain = recipes.ddpm_diffusion(p, "cpu")
u = recipes.ch21_model(data.x_train, data.y_train, p, "cpu", network="unet")[0]
orig = recipes.dit_settings
recipes.dit_settings = lambda profile: {**orig(profile), "steps": 8000}
os.environ["BOOK_CACHE"] = "/tmp/pilot/cache"
m = recipes.ch21_model(data.x_train, data.y_train, p, "cpu", network="dit-M", prefix="pilot3")[0]
labels = torch.arange(8)
keep = (491, 451, 401, 351, 301, 251, 201, 151, 101, 51, 21, 1)
fig, axs = plt.subplots(4, 1, figsize=(12, 9))
for k, (name, net) in enumerate((("unet", u), ("dit", m))):
    xs, x0s = {}, {}
    def cb(t, x, x0):
        xs[t] = x[:8].clone(); x0s[t] = x0[:8].clone()
    f = lambda x, t, net=net: net(x, t, labels); f.config = net.config
    with torch.no_grad():
        chain.sample(f, (8, 1, 28, 28), n_steps=50, generator=torch.Generator().manual_seed(3), callback=cb, quiet=True)
    print(name, sorted(x0s))
    sel = sorted(x0s, reverse=True)[::4]
    x0s = {t: x0s[t] for t in sel}; xs = {t: xs[t] for t in sel}
    for j, d in enumerate((x0s, xs)):
        g = torch.cat([torch.cat([d[t][i, 0].clamp(-1, 1) for t in sorted(d, reverse=True)], 1) for i in range(4)], 0)
        axs[2 * k + j].imshow(g, cmap="gray"); axs[2 * k + j].set_title(f"{name} {'x0 pred' if j == 0 else 'x_t'} at t={sorted(d, reverse=True)}"); axs[2*k+j].axis("off")
plt.tight_layout(); plt.savefig("/tmp/p8/traj.png", dpi=60)
