"""Deterministic autoencoders (chapter 1): MLP and convolutional models and their losses.

    model = Autoencoder(latent_dim=16)              # g: 784 -> 512 -> 16, f: 16 -> 512 -> 784
    z = model.encode(x)                             # x: (B, 1, 28, 28) -> z: (B, 16)
    x_hat = model.decode(z)                         # (B, 1, 28, 28), values in [0, 1]
    reconstruction_loss(model, x)                   # plain AE
    denoising_loss(model, x, noise_std=0.5)         # DAE: noisy inputs, clean targets
    reconstruction_loss(model, x) + lam * contractive_penalty(model, x)   # CAE

Losses are plain functions `(model, x) -> scalar`, so they plug into `companion.train.fit`
as `loss_fn(model, batch)`. Squared errors are summed over the 784 pixels and averaged
over the batch: one number per image, the quantity PCA minimises too.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import IMAGE_SHAPE, check_images
from ..run import checks

N_PIXELS = 28 * 28

# Elementwise activations: the module, and its derivative written with the input a and
# output h = act(a). The derivative lets the contractive penalty use the chain rule directly.
ACTIVATIONS = {
    "relu": (nn.ReLU, lambda a, h: (a > 0).to(a.dtype)),
    "sigmoid": (nn.Sigmoid, lambda a, h: h * (1 - h)),
    "tanh": (nn.Tanh, lambda a, h: 1 - h * h),
    "identity": (nn.Identity, lambda a, h: torch.ones_like(a)),
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name][0]()


def _check_codes(z: torch.Tensor, latent_dim: int) -> torch.Tensor:
    if not torch.is_tensor(z):
        raise TypeError(f"expected a torch.Tensor of codes, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"expected codes of shape (B, {latent_dim}), got {tuple(z.shape)}"
                         + ("; a single code? use z.unsqueeze(0)" if z.dim() == 1 else ""))
    return z


class _Codec(nn.Module):
    """encode/decode/forward shared by the autoencoders: subclasses build `self.encoder`
    and `self.decoder` and set `self.latent_dim`."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) -> z: (B, latent_dim)."""
        return self.encoder(check_images(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) -> x_hat: (B, 1, 28, 28)."""
        return self.decoder(_check_codes(z, self.latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) -> reconstruction f(g(x)): (B, 1, 28, 28)."""
        return self.decode(self.encode(x))


class Autoencoder(_Codec):
    """MLP autoencoder: encoder g (784 -> hidden -> latent_dim), decoder f mirroring it.

    latent_dim: size of the code z (the bottleneck).
    hidden:     widths of the hidden layers of g; f uses them in reverse order. The default
                (512,) gives two linear layers on each side ("2-layer MLPs"); () gives a
                purely linear map on each side.
    activation: hidden nonlinearity, one of relu, sigmoid, tanh, identity.
    output:     "sigmoid" keeps decoded pixels in [0, 1]; "identity" leaves them free
                (the linear autoencoder of the PCA comparison).

    encode: x (B, 1, 28, 28) -> z (B, latent_dim);  decode: z -> (B, 1, 28, 28).
    """

    def __init__(self, latent_dim: int = 16, hidden: tuple[int, ...] = (512,),
                 activation: str = "relu", output: str = "sigmoid"):
        super().__init__()
        latent_dim = checks.count("latent_dim", latent_dim)
        hidden = tuple(checks.count(f"hidden[{i}] (a layer's width)", h)
                       for i, h in enumerate(hidden))
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"output must be 'sigmoid' or 'identity', got {output!r}")
        self.latent_dim, self.hidden = latent_dim, hidden
        self.activation, self.output = activation, output

        enc: list[nn.Module] = [nn.Flatten()]
        widths = (N_PIXELS, *hidden)
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            enc += [nn.Linear(a, b), _activation(activation)]
        enc.append(nn.Linear(widths[-1], self.latent_dim))  # the code itself is unconstrained
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        widths = (self.latent_dim, *reversed(hidden))
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            dec += [nn.Linear(a, b), _activation(activation)]
        dec += [nn.Linear(widths[-1], N_PIXELS), _activation(output),
                nn.Unflatten(1, IMAGE_SHAPE)]
        self.decoder = nn.Sequential(*dec)

    def encoder_linears(self) -> list[nn.Linear]:
        """The encoder's linear layers, input side first."""
        return [m for m in self.encoder if isinstance(m, nn.Linear)]


class ConvAutoencoder(_Codec):
    """Convolutional autoencoder with the same interface as `Autoencoder`.

    g: stride-2 convolutions (28 -> 14 -> 7) and a linear map to the code;
    f: a linear map back to 7 x 7 feature maps and stride-2 transposed convolutions.
    depth: 2 (one convolution per resolution) or 4 (each stride-2 convolution followed by a
           3 x 3 stride-1 one, and the decoder mirrored: the four-conv / four-transposed-conv
           autoencoder). At depth 4 every hidden convolution is
           followed by BatchNorm: without it, trained with Adam at 2e-3, this deeper stack
           fell into the all-black image (sigmoid saturated) and never left it.
    encode: x (B, 1, 28, 28) -> z (B, latent_dim);  decode: z -> (B, 1, 28, 28) in [0, 1].
    """

    def __init__(self, latent_dim: int = 16, channels: tuple[int, int] = (32, 64),
                 depth: int = 2):
        super().__init__()
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if depth not in (2, 4):
            raise ValueError(f"depth must be 2 or 4 (convolutions per side), got {depth!r}")
        c1, c2 = (int(c) for c in channels)
        self.latent_dim, self.depth = int(latent_dim), depth
        extra = depth == 4

        def act(c):  # the nonlinearity after a hidden convolution
            return [nn.BatchNorm2d(c), nn.ReLU()] if extra else [nn.ReLU()]

        def same(c, transposed=False):  # a 3 x 3 layer that keeps the resolution
            conv = nn.ConvTranspose2d if transposed else nn.Conv2d
            return [conv(c, c, 3, padding=1), *act(c)] if extra else []

        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1), *act(c1), *same(c1),     # 28 -> 14
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), *act(c2), *same(c2),    # 14 -> 7
            nn.Flatten(), nn.Linear(c2 * 7 * 7, self.latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, c2 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
            *same(c2, True),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), *act(c1),      # 7 -> 14
            *same(c1, True),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), nn.Sigmoid(),   # 14 -> 28
        )


# ----------------------------------------------------------------------------- losses

def reconstruction_error(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
                         kind: str = "mse") -> torch.Tensor:
    """Per-image error between model(x) and target (default: x itself).

    x, target: (B, 1, 28, 28) -> (B,). kind "mse": squared error summed over pixels;
    "bce": binary cross-entropy summed over pixels (needs outputs in [0, 1]).
    """
    check_images(x)
    target = x if target is None else check_images(target)
    if target.shape != x.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from x {tuple(x.shape)}")
    x_hat = model(x)
    if kind == "mse":
        per_pixel = (x_hat - target).pow(2)
    elif kind == "bce":
        per_pixel = nn.functional.binary_cross_entropy(x_hat, target, reduction="none")
    else:
        raise ValueError(f"kind must be 'mse' or 'bce', got {kind!r}")
    return per_pixel.flatten(1).sum(1)


def reconstruction_loss(model: nn.Module, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Plain autoencoder objective: mean over the batch of L(x, f(g(x))). x: (B, 1, 28, 28).

    Book: :eq:`ch1-objective`.
    """
    return reconstruction_error(model, x, kind=kind).mean()


def add_noise(x: torch.Tensor, noise_std: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x + noise_std * eps with eps ~ N(0, I) (not clipped: the noise is exactly Gaussian)."""
    noise_std = checks.real("noise_std", noise_std, low=0.0)
    if noise_std == 0:
        return x
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                      device="cpu" if generator is not None else x.device).to(x.device)
    return x + noise_std * eps


def denoising_loss(model: nn.Module, x: torch.Tensor, noise_std: float = 0.5,
                   kind: str = "mse", generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising objective: mean over the batch of L(x, f(g(x + delta))), delta ~ N(0, s^2 I).

    The model sees the noisy input; the target is the clean x. With noise_std=0 this is
    `reconstruction_loss`.

    Book: :eq:`ch1-dae`.
    """
    check_images(x)
    return reconstruction_error(model, add_noise(x, noise_std, generator), target=x,
                                kind=kind).mean()


def worst_perturbation(model: nn.Module, x: torch.Tensor, radius: float,
                       steps: int = 1) -> torch.Tensor:
    """An approximately worst input perturbation for the reconstruction of x.

    Approximates argmax_{||delta|| <= radius} L(x, f(g(x + delta))), one norm ball per image,
    by `steps` steps of projected gradient ascent along the normalized gradient (one step:
    the fast gradient method). The result carries no graph. x: (B, 1, 28, 28) -> delta, same.
    """
    radius = checks.real("radius", radius, low=0.0)
    steps = checks.count("steps", steps)
    delta = torch.zeros_like(x)
    if radius == 0:
        return delta
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = reconstruction_error(model, x + delta, target=x).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta.detach() + (radius / steps) * grad / norm
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * (radius / length).clamp(max=1.0)            # back into the ball
    return delta.detach()


def adversarial_loss(model: nn.Module, x: torch.Tensor, radius: float = 1.0,
                     steps: int = 1) -> torch.Tensor:
    """Adversarially robust objective: mean over the batch of
    max_{||delta|| <= radius} L(x, f(g(x + delta))), the max approximated by
    `worst_perturbation`. With radius=0 this is `reconstruction_loss`. x: (B, 1, 28, 28).

    Book: :eq:`ch1-arae`.
    """
    check_images(x)
    delta = worst_perturbation(model, x, radius, steps)
    return reconstruction_error(model, x + delta, target=x).mean()


# ---------------------------------------------------------------- contractive penalty

def sigmoid_layer_penalty(x: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor) -> torch.Tensor:
    """Closed-form ||dh/dx||_F^2 for one layer h = sigmoid(W x + b).

    dh_j/dx = h_j (1 - h_j) W_j (W_j: row j), so the squared Frobenius norm is
    sum_j (h_j (1 - h_j))^2 ||W_j||^2.
    x: (B, D), weight: (K, D), bias: (K,) -> (B,).

    Book: :eq:`ch1-sigmoid-jacobian`.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (B, D) and weight (K, D), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    h = torch.sigmoid(x @ weight.T + bias)
    return ((h * (1 - h)).pow(2) * weight.pow(2).sum(1)).sum(1)


def jacobian_penalty_autograd(encode, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """||d encode(x) / dx||_F^2 per example by autograd, for any encoder.

    One backward pass per code dimension: since the examples do not interact, the
    gradient of sum_b z[b, j] with respect to x holds row j of every example's Jacobian.
    x: (B, ...) -> (B,). create_graph=True lets the result be differentiated (training).
    """
    x = x.detach().requires_grad_(True)
    z = encode(x)
    if z.dim() != 2:
        raise ValueError(f"encode must return (B, K) codes, got {tuple(z.shape)}")
    total = x.new_zeros(x.shape[0])
    for j in range(z.shape[1]):
        (row,) = torch.autograd.grad(z[:, j].sum(), x, create_graph=create_graph,
                                     retain_graph=True)
        total = total + row.flatten(1).pow(2).sum(1)
    return total


def encoder_jacobian(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """The exact Jacobian dg/dx of an MLP `Autoencoder`'s encoder by the chain rule.

    g = W_L o act o ... o act o W_1, so J = W_L D_{L-1} W_{L-1} ... D_1 W_1 with
    D_i = diag(act'(a_i)). x: (B, 1, 28, 28) -> (B, latent_dim, 784); differentiable.
    """
    if not isinstance(model, Autoencoder):
        raise TypeError("encoder_jacobian needs an MLP Autoencoder; for other encoders use "
                        "jacobian_penalty_autograd(model.encode, x)")
    h = check_images(x).flatten(1)
    deriv = ACTIVATIONS[model.activation][1]
    linears = model.encoder_linears()
    jac = None  # (B, width, 784) Jacobian of the current layer's output
    for i, lin in enumerate(linears):
        a = lin(h)
        jac = lin.weight.expand(h.shape[0], -1, -1) if jac is None else lin.weight @ jac
        if i < len(linears) - 1:  # hidden layer: multiply by act'(a) row by row
            h = ACTIVATIONS[model.activation][0]()(a)
            jac = deriv(a, h).unsqueeze(2) * jac
    return jac


def one_hidden_layer_penalty(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Closed-form ||J_g(x)||_F^2 for an encoder with one hidden layer, g = W2 act(W1 x + b1) + b2.

    J = W2 D W1 with D = diag(d), d = act'(W1 x + b1), so ||J||_F^2 = tr(J J^T)
    = sum_jk d_j d_k (W1 W1^T)_jk (W2^T W2)_jk: one (H, H) matrix per step and a quadratic
    form per example, far cheaper than building J. x: (B, 1, 28, 28) -> (B,).

    Book: :eq:`ch1-two-layer-jacobian`.
    """
    if not isinstance(model, Autoencoder) or len(model.hidden) != 1:
        raise TypeError("one_hidden_layer_penalty needs an Autoencoder with hidden=(H,)")
    first, second = model.encoder_linears()
    a = first(check_images(x).flatten(1))
    act, deriv = ACTIVATIONS[model.activation]
    d = deriv(a, act()(a))                                              # (B, H)
    m = (first.weight @ first.weight.T) * (second.weight.T @ second.weight)  # (H, H)
    return ((d @ m) * d).sum(1)


def contractive_penalty(model: nn.Module, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Mean over the batch of ||J_g(x)||_F^2, the squared Frobenius norm of the encoder Jacobian.

    method: "closed" (Autoencoder with one hidden layer), "chain" (any MLP Autoencoder:
    builds J by the chain rule), "autograd" (any encoder: one backward pass per code
    dimension), or "auto" (the cheapest that applies). All are exact and differentiable
    in the model's weights, so the penalty can be trained. x: (B, 1, 28, 28) -> scalar.

    Book: :eq:`ch1-two-layer-jacobian`.
    """
    check_images(x)
    if method == "auto":
        if isinstance(model, Autoencoder):
            method = "closed" if len(model.hidden) == 1 else "chain"
        else:
            method = "autograd"
    if method == "closed":
        return one_hidden_layer_penalty(model, x).mean()
    if method == "chain":
        return encoder_jacobian(model, x).pow(2).sum((1, 2)).mean()
    if method == "autograd":
        return jacobian_penalty_autograd(model.encode, x, create_graph=True).mean()
    raise ValueError(f"method must be 'auto', 'closed', 'chain' or 'autograd', got {method!r}")


def contractive_loss(model: nn.Module, x: torch.Tensor, weight: float = 1e-2,
                     kind: str = "mse"):
    """CAE objective: reconstruction_loss + weight * contractive_penalty.

    Returns (loss, {"recon": ..., "penalty": ...}) so that `fit` logs both terms.

    Book: :eq:`ch1-cae`.
    """
    recon = reconstruction_loss(model, x, kind=kind)
    penalty = contractive_penalty(model, x)
    return recon + weight * penalty, {"recon": recon.detach(), "penalty": penalty.detach()}


# ------------------------------------------------------------------- linear autoencoder

def linear_autoencoder(latent_dim: int) -> Autoencoder:
    """x_hat = D (E x + b) + c: no hidden layer, no nonlinearity, unconstrained output."""
    return Autoencoder(latent_dim, hidden=(), activation="identity", output="identity")


@torch.no_grad()
def fit_linear_als(model: Autoencoder, x: torch.Tensor, iters: int = 50) -> list[float]:
    """Minimise a linear autoencoder's loss by alternating exact least squares.

    With the data centred (x_c = x - mean; the optimal offsets do exactly that), the loss
    is (1/N) ||X_c - X_c E^T D^T||^2. For a fixed encoder E the best decoder is the least-
    squares fit of X_c on the codes Z = X_c E^T; for a fixed decoder D the best encoder is
    its pseudo-inverse (D^T D)^-1 D^T. Neither half-step can raise the loss. Starts from
    the model's current encoder; writes the result into the model.
    x: (N, 1, 28, 28). Returns the loss after each iteration.

    Book: :eq:`ch1-linear-loss`.
    """
    if not isinstance(model, Autoencoder) or model.hidden or model.activation != "identity" \
            or model.output != "identity":
        raise TypeError("fit_linear_als needs a linear autoencoder: use linear_autoencoder(k)")
    iters = checks.count("iters", iters)
    xf = check_images(x).flatten(1).double()
    mean = xf.mean(0)
    xc = xf - mean
    enc, dec = model.encoder_linears()[0], model.decoder[0]
    e = enc.weight.double()                                          # (k, 784)
    losses = []
    for _ in range(iters):
        z = xc @ e.T                                                 # (N, k)
        d = torch.linalg.solve(z.T @ z, z.T @ xc).T                  # (784, k)
        e = torch.linalg.solve(d.T @ d, d.T)                         # (k, 784)
        losses.append((xc - (xc @ e.T) @ d.T).pow(2).sum(1).mean().item())
    enc.weight.copy_(e)
    enc.bias.copy_(-e @ mean)
    dec.weight.copy_(d)
    dec.bias.copy_(mean)
    return losses


# ------------------------------------------------------------------------ latent space

@torch.no_grad()
def interpolate(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor,
                steps: int = 9) -> torch.Tensor:
    """Decode the straight line between the codes of two images.

    x_a, x_b: (1, 1, 28, 28) -> (steps, 1, 28, 28), from f(g(x_a)) to f(g(x_b)).
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    z_a, z_b = model.encode(x_a), model.encode(x_b)
    if z_a.shape[0] != 1 or z_b.shape[0] != 1:
        raise ValueError("interpolate takes one image at each end: shapes (1, 1, 28, 28)")
    t = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype).unsqueeze(1)
    return model.decode((1 - t) * z_a + t * z_b)


@torch.no_grad()
def encode_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Codes of a whole dataset in batches: (N, 1, 28, 28) -> (N, latent_dim)."""
    batch_size = checks.count("batch_size", batch_size)
    return torch.cat([model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
