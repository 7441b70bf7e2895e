# Chapter 21 pilot: chapter 9's cpu U-Net fine-tuned to read captions, three ways, through
# the recipe (recipes.ch21_snapshots, network="unet"); adherence on 200 test captions.
import sys, time, torch, companion
from companion import captions, recipes
from companion.data import load
from companion.models.classifier import predict, to_unit
profile, device = companion.setup(seed=0)
data = load("mnist", n_train=profile.n_train, n_test=profile.n_test, device=device)
judge, _ = recipes.classifier(data, profile, device)
chain = recipes.ddpm_diffusion(profile, device)
levels, _ = recipes.text_levels(data.x_train)
n = 200
tl = levels.of(captions.measure(data.x_test[:n]))
ids = captions.tokenize(captions.caption(data.y_test[:n], tl))
asked = {"digit": data.y_test[:n], **tl}
for cond in sys.argv[1:]:
    t0 = time.time()
    runs = recipes.ch21_snapshots(data.x_train, data.y_train, profile, device,
                                  network="unet", cond=cond, fractions=(0.25, 0.5))
    print(cond, "trained", round(time.time() - t0), "s", flush=True)
    for steps, (model, run) in runs.items():
        for w in (0.0, 2.0):
            eps = recipes.ch21_eps_function(model, ids, w, device)
            s = chain.sample(eps, (n, 1, 28, 28), n_steps=50, variance="posterior",
                             generator=torch.Generator().manual_seed(1), quiet=True)
            d = predict(judge, to_unit(s))[1].argmax(1)
            ok = captions.obeys(to_unit(s), asked, levels, judge_digits=d)
            print(cond, steps, w, {k: round(v.float().mean().item(), 2)
                                   for k, v in ok.items()}, flush=True)
