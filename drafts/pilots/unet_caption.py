# Does chapter 9's cpu U-Net follow a caption at the cpu budget? Pilot for chapter 21's
# points 4-6 (issue 79): the caption through a small text encoder, pooled and added to the
# time embedding (FiLM, the adaLN-like way), 900 updates of 64 as chapter 9's cpu recipe.
import copy, sys, time, torch
import torch.nn.functional as F
from companion import captions, recipes
from companion.data import load
from companion.models.classifier import predict, to_unit
from companion.models.dit import TextEncoder
from companion.models.unet import UNet, preset, timestep_embedding
from companion.run.profiles import get_profile

torch.set_num_threads(2); torch.manual_seed(0)
p = get_profile("cpu"); dev = "cpu"
data = load("mnist", n_train=p.n_train, n_test=p.n_test, device=dev)
judge, _ = recipes.classifier(data, p, dev)
chain = recipes.ddpm_diffusion(p, dev)
s9 = recipes.ddpm_settings(p)
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else s9["steps"]


class CaptionUNet(UNet):
    def __init__(self, cfg):
        super().__init__(cfg)
        dim = 4 * cfg.channels[0]
        self.text = TextEncoder(len(captions.VOCAB), 64, 8, depth=2, heads=4)
        self.proj = torch.nn.Linear(64, dim)
        torch.nn.init.zeros_(self.proj.weight); torch.nn.init.zeros_(self.proj.bias)

    def forward(self, x, t, ids):
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]).to(x.dtype))
        emb = emb + self.proj(self.text(ids)[2])
        return self.trunk(x, emb)


net = CaptionUNet(preset(s9["preset"], T=s9["T"]))
ema = copy.deepcopy(net)
opt = torch.optim.Adam(net.parameters(), lr=s9["lr"])
x_all = data.x_train * 2 - 1
levels = captions.Levels.fit(captions.measure(data.x_train))
lv = levels.of(captions.measure(data.x_train))
AB = torch.as_tensor(chain.alphas_bar).float()
t0 = time.perf_counter(); L = []
for step in range(STEPS):
    i = torch.randint(0, len(x_all), (s9["batch_size"],))
    ids = recipes.caption_batch(data.y_train[i], {a: v[i] for a, v in lv.items()})
    x0 = x_all[i]; t = torch.randint(1, s9["T"] + 1, (len(i),))
    e = torch.randn_like(x0); ab = AB[t - 1].view(-1, 1, 1, 1)
    lr = s9["lr"] * min(1.0, (step + 1) / 100)
    for g in opt.param_groups: g["lr"] = lr
    loss = F.mse_loss(net(ab.sqrt() * x0 + (1 - ab).sqrt() * e, t, ids), e)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step(); L.append(loss.item())
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), net.parameters()): pe.lerp_(pm, 1 - s9["ema"])
print(f"{STEPS} updates in {time.perf_counter() - t0:.0f} s; loss last 100 "
      f"{sum(L[-100:]) / 100:.4f}", flush=True)
# test captions: the test digits' own captions, all attributes stated
n = 200
tl = levels.of(captions.measure(data.x_test[:n]))
texts = captions.caption(data.y_test[:n], tl)
ids = captions.tokenize(texts)
null = captions.tokenize([captions.UNCONDITIONAL] * n)
asked = {"digit": data.y_test[:n], **tl}
for name, m, w in (("ema", ema, 0.0), ("ema", ema, 2.0), ("raw", net, 0.0)):
    def eps(x, t, w=w, m=m):
        if w == 0:
            return m(x, t, ids)
        return (1 + w) * m(x, t, ids) - w * m(x, t, null)
    eps.T = s9["T"]
    with torch.no_grad():
        s = chain.sample(eps, (n, 1, 28, 28), n_steps=100, variance="posterior",
                         generator=torch.Generator().manual_seed(1), quiet=True)
    digits = predict(judge, to_unit(s))[1].argmax(1)
    ok = captions.obeys(to_unit(s), asked, levels, judge_digits=digits)
    print(f"{name} w={w}: digit {ok['digit'].float().mean():.2f}, thickness "
          f"{ok['thickness'].float().mean():.2f}, width {ok['width'].float().mean():.2f}, "
          f"slant {ok['slant'].float().mean():.2f}, all {ok['all'].float().mean():.2f} "
          "(chance: digit 0.10, each attribute about 0.33)", flush=True)
    torch.save(s, f"/tmp/unet_caption_{name}_w{w}.pt")
