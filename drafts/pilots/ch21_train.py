# Trains (or loads) chapter 21's label-conditioned networks for point 3, as the chapter does.
import time, companion
from companion import recipes
from companion.data import load
profile, device = companion.setup(seed=0)
data = load("mnist", n_train=profile.n_train, n_test=profile.n_test, device=device)
for net in ("unet", "dit-S", "dit-M", "dit-L"):
    t0 = time.time()
    kept = recipes.ch21_snapshots(data.x_train, data.y_train, profile, device, network=net)
    for u, (m, r) in kept.items():
        print(net, u, f"loss {sum(r.history['loss'][-100:]) / 100:.4f}",
              f"train {r.train_seconds:.0f} s", flush=True)
    print(net, "took", round(time.time() - t0), "s", flush=True)
