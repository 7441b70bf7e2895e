"""Quantizers (chapter 19): a learned codebook of K vectors (VQ), and finite scalar
quantization (FSQ), each turning encoder outputs into codes from a finite set.

    vq = VectorQuantizer(K=64, D=16)                 # ema=True: EMA codebook updates
    out = vq(z_e)                                    # z_e: (B, 16, 7, 7) encoder outputs
    out.z_q, out.indices                             # (B, 16, 7, 7); (B, 7, 7) in 0..63
    loss = -log_p + out.codebook_loss + out.commitment_loss     # each (B,), per image
    usage(out.indices, 64), perplexity(out.indices, 64)

VQ-VAE (van den Oord, Vinyals and Kavukcuoglu 2017), at every position of the grid:

    k = argmin_j ||z_e - e_j||^2,   z_q = e_k
    L = -log p(x | z_q) + ||sg[z_e] - e_k||^2 + beta ||z_e - sg[e_k]||^2,   beta = 0.25

sg[.] stops the gradient; the decoder's gradient reaches the encoder straight through the
quantizer (d z_q / d z_e taken as the identity). Read as a VAE, q(k | x) is one-hot on the
nearest code and the prior uniform over the K codes, so the KL is log K per position, a
constant (`rate_bits`). FSQ (Mentzer et al. 2024) has no codebook to learn: each of a few
channels is bounded and rounded to L_i levels, prod L_i codes in all.

Positions are the spatial cells of channels-first tensors (B, D, H, W); the losses are
summed over positions and channels, one number per image (B,), as chapter 1 sums squared
errors over pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..run import checks


@dataclass
class Quantized:
    """What a quantizer returns for encoder outputs z_e (B, D, H, W).

    z_q:             (B, D, H, W) the codes, with the straight-through gradient to z_e
    indices:         (B, H, W) int64, the code of every position, 0..K-1
    codebook_loss:   (B,) ||sg[z_e] - e_k||^2 summed over positions and channels (0 for FSQ;
                     without gradient under EMA updates, reported only)
    commitment_loss: (B,) beta ||z_e - sg[e_k]||^2, the same sums (0 for FSQ)
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


def check_latents(name: str, z, D: int) -> torch.Tensor:
    """z if it is a float tensor (B, D, H, W) of encoder outputs; finite where it lives on
    the CPU (on a GPU not checked: a device sync every training step)."""
    checks.tensor(name, z, floating=True)
    if z.dim() != 4 or z.shape[1] != D:
        raise checks.ArgumentError(
            f"{name} must be encoder outputs (B, D, H, W) = (B, {D}, H, W), channels first, "
            f"got shape {tuple(z.shape)}" + ("; channels last? use z.permute(0, 3, 1, 2)"
                                             if z.dim() == 4 and z.shape[-1] == D else ""))
    if checks.on_host(z):
        checks.finite(name, z, "a diverged encoder? check its training loss and weights")
    return z


def _positions(z: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B H W, D): one row per position."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _grid(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B H W, D) -> (B, D, H, W), the inverse of _positions for a tensor shaped `like`."""
    B, _, H, W = like.shape
    return rows.view(B, H, W, rows.shape[-1]).permute(0, 3, 1, 2)  # B = 0 too


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """k = argmin_j ||z - e_j||^2 for every row: z (N, D), codebook (K, D) -> (N,) int64.

    The squared distances come from ||z||^2 - 2 z.e_j + ||e_j||^2, one matrix product.
    Exact ties (a duplicated code, or a point halfway between codes when the arithmetic is
    exact) go to the lowest index, as torch.argmin does; distances equal only up to rounding
    may go either way. The distances are computed in float32 at least, with autocast off:
    under a GPU's mixed precision the product would otherwise run in bf16 or fp16, whose
    rounding reorders codes that are not near a tie.

    NaN or inf in z or the codebook is refused (on the CPU: on a GPU the check would cost a
    device sync a call).

    Book: :eq:`ch19-nearest`.
    """
    checks.tensor("z", z, dims=2)
    checks.tensor("codebook", codebook, dims=2, nonempty=True)
    if z.shape[1] != codebook.shape[1]:
        raise checks.ArgumentError(f"z (N, D) and codebook (K, D) must have one D, got z "
                                   f"{tuple(z.shape)} and codebook {tuple(codebook.shape)}")
    for name, t in (("z", z), ("codebook", codebook)):  # a NaN row's distances: code 0
        if checks.on_host(t):
            checks.finite(name, t, "a NaN row has no nearest code (argmin called it code 0); "
                          "a diverged encoder or codebook? check its training loss")
    dtype = torch.promote_types(torch.promote_types(z.dtype, codebook.dtype), torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        z, codebook = z.to(dtype), codebook.to(dtype)
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)
    return d.argmin(1)


def straight_through(value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The value `value` with the gradient of z: z + sg[value - z], the straight-through
    estimator, computed as sg[value] + (z - sg[z]), which has the same gradient (identity in
    z, none to `value`) and whose value is `value` exactly (z + (value - z) can be off by a
    rounding). The true map z -> value is piecewise constant: a finite difference of it is
    0 inside a cell and jumps at the boundaries, so its gradient says nothing; the
    estimator copies the gradient at the output to the input instead.

    Book: :eq:`ch19-ste`.
    """
    checks.tensor("value", value)
    checks.tensor("z", z)
    checks.same_shape("value and z", value, z)  # a (1,) value broadcast over z silently
    return value.detach() + (z - z.detach())


class VectorQuantizer(nn.Module):
    """A codebook of K vectors of dimension D; nearest-code assignment, straight-through.

    K, D:     the number of codes and their dimension (the encoder's output channels).
    beta:     the commitment weight (0.25, van den Oord et al. 2017).
    ema:      update the codebook by exponential moving averages of the encoder outputs
              assigned to each code (their appendix; Razavi et al. 2019) instead of by the
              codebook loss, which then carries no gradient (the codebook is a buffer).
    decay:    the EMA decay gamma (0.99).
    eps:      the Laplace smoothing of the EMA counts (1e-5).

    The codebook starts uniform on [-1/K, 1/K] (the common PyTorch port of the paper). In
    training mode every forward pass counts, for each code, the steps since it was last
    assigned (`unused_steps`), which `restart_dead_codes` reads; with ema=True it also makes
    the EMA update, after quantizing with the codebook as it was.
    """

    def __init__(self, K: int = 512, D: int = 64, *, beta: float = 0.25, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.K = checks.codes(K)
        self.D = checks.size("D (the dimension of a code)", D, 65_536, "a code is a vector "
                             "of the encoder's channels (the book's: 2 to 64)")
        self.beta = checks.real("beta", beta, low=0.0)
        self.ema, self.decay = bool(ema), checks.probability("decay", decay)
        self.eps = checks.real("eps", eps, low=0.0)
        init = torch.empty(self.K, self.D).uniform_(-1 / self.K, 1 / self.K)
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(self.K))  # each code seen once,
            self.register_buffer("code_sum", init.clone())            # at its first value
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("unused_steps", torch.zeros(self.K, dtype=torch.long))

    def forward(self, z_e: torch.Tensor) -> Quantized:
        """z_e: (B, D, H, W) -> Quantized: z_q = e_k with the straight-through gradient,
        the indices k (B, H, W), and the two losses per image (B,)."""
        check_latents("z_e", z_e, self.D)
        rows = _positions(z_e)
        indices = nearest_code(rows.detach(), self.codebook.detach())
        e = _grid(self.codebook[indices].to(z_e.dtype), z_e)        # (B, D, H, W)
        codebook_loss = (z_e.detach() - e).pow(2).flatten(1).sum(1)
        commitment_loss = self.beta * (z_e - e.detach()).pow(2).flatten(1).sum(1)
        if self.training:
            self._count_unused(indices)
            if self.ema:
                self._ema_update(rows.detach(), indices)
        B, _, H, W = z_e.shape
        return Quantized(straight_through(e, z_e), indices.view(B, H, W), codebook_loss,
                         commitment_loss)

    def count_unused(self, indices: torch.Tensor) -> None:
        """unused_steps += 1 for the codes not among `indices` (codes 0..K-1, any shape), 0
        for those among them."""
        self._count_unused(check_indices("indices", indices, self.K))

    @torch.no_grad()
    def _count_unused(self, indices: torch.Tensor) -> None:
        used = torch.bincount(indices.flatten(), minlength=self.K) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)

    def ema_update(self, rows: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step of the codebook from encoder outputs rows (N, D) and their codes
        indices (N,):

            N_i <- gamma N_i + (1 - gamma) n_i,      n_i = #{j : k_j = i}
            m_i <- gamma m_i + (1 - gamma) sum_{j : k_j = i} z_e,j
            e_i  = m_i / N~_i,   N~_i = (N_i + eps) / (n + K eps) n,   n = sum_i N_i

        The smoothing N~ keeps a code that is never assigned away from a division by 0 and
        leaves the total count n unchanged; sum_i N_i follows the EMA of the batch sizes.

        Book: :eq:`ch19-ema`.
        """
        if not self.ema:
            raise checks.ArgumentError("ema_update is for a VectorQuantizer made with "
                                       "ema=True; this one learns its codebook by gradient")
        checks.tensor("rows", rows, dims=2, floating=True)
        check_indices("indices", indices, self.K)
        if rows.shape[1] != self.D or indices.shape != (len(rows),):
            raise checks.ArgumentError(
                f"rows must be encoder outputs (N, D) = (N, {self.D}) and indices their codes "
                f"(N,), got rows {tuple(rows.shape)} and indices {tuple(indices.shape)}")
        self._ema_update(rows, indices)

    @torch.no_grad()
    def _ema_update(self, rows: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.K).to(self.cluster_size)
        sums = torch.zeros_like(self.code_sum).index_add_(0, indices, rows.to(self.code_sum))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(self.code_sum / self.smoothed_counts()[:, None])

    def smoothed_counts(self) -> torch.Tensor:
        """N~_i = (N_i + eps) / (n + K eps) n, (K,): the EMA counts with Laplace smoothing."""
        n = self.cluster_size.sum()
        return (self.cluster_size + self.eps) / (n + self.K * self.eps) * n

    @torch.no_grad()
    def restart_dead_codes(self, z_e: torch.Tensor, after: int, *,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Move every code unused for at least `after` training steps onto an encoder output
        of this batch, drawn at random without replacement (with replacement if the batch
        has fewer positions than dead codes), and reset its counter (Dhariwal et al. 2020;
        Zeghidour et al. 2021). Returns the indices of the codes moved, (n_dead,) int64.

        z_e: (B, D, H, W). Deterministic given `generator` (its device draws). Under EMA the
        running sum m_i is set so that e_i is the new value (the counts N_i are kept, so
        their total still follows the batch sizes); a gradient-trained codebook keeps its
        optimizer state (Adam's moments) for the row, which the next steps wash out."""
        after = checks.count("after (training steps unused before a restart)", after)
        check_latents("z_e", z_e, self.D)
        checks.generator("generator", generator)
        dead = (self.unused_steps >= after).nonzero().flatten()
        if len(dead) == 0:
            return dead
        rows = _positions(z_e).detach()
        if len(rows) == 0:
            raise checks.ArgumentError(f"z_e {tuple(z_e.shape)} holds no positions to restart "
                                       f"the {len(dead)} dead code(s) from: pass a batch")
        device = generator.device if generator is not None else rows.device
        if len(rows) >= len(dead):
            pick = torch.randperm(len(rows), generator=generator, device=device)[:len(dead)]
        else:
            pick = torch.randint(len(rows), (len(dead),), generator=generator, device=device)
        new = rows[pick.to(rows.device)].to(self.codebook.dtype)
        if self.ema:
            self.code_sum[dead] = new * self.smoothed_counts()[dead, None]
        self.codebook[dead] = new
        self.unused_steps[dead] = 0
        return dead


# --- usage and rate -----------------------------------------------------------------------
def code_counts(indices: torch.Tensor, K: int) -> torch.Tensor:
    """How often each of K codes occurs in `indices` (any shape, values 0..K-1) -> (K,)
    int64. The range is checked on CPU tensors (on a GPU, bincount's own assert)."""
    K = checks.codes(K)
    checks.tensor("indices", indices, nonempty=True)
    return torch.bincount(check_indices("indices", indices, K).flatten(), minlength=K)


def check_indices(name: str, indices, K: int) -> torch.Tensor:
    """indices if it is an integer tensor of codes 0..K-1 (any shape; the values checked on
    CPU tensors: on a GPU, bincount's own assert)."""
    checks.tensor(name, indices)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise checks.ArgumentError(f"{name} must be an integer tensor of codes 0..{K - 1}, "
                                   f"got {indices.dtype}")
    if indices.numel() and checks.on_host(indices):
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= K:
            raise checks.ArgumentError(f"{name} must hold codes 0..{K - 1} (K = {K}), got "
                                       f"values in [{lo}, {hi}]")
    return indices


def usage(indices: torch.Tensor, K: int) -> torch.Tensor:
    """The fraction of the K codes that occur at least once in `indices`, a 0-dim tensor
    (no device sync: log it as it is, float() it to print)."""
    return (code_counts(indices, K) > 0).double().mean()


def perplexity(indices: torch.Tensor, K: int) -> torch.Tensor:
    """exp(H(p)), p the average one-hot of `indices` (the codes' frequencies), 0 log 0 = 0,
    a 0-dim tensor: K when every code is used equally often, 1 when one code takes every
    position."""
    counts = code_counts(indices, K).double()
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


def rate_bits(K: int, positions: int = 1) -> float:
    """positions x log2 K: the KL, in bits, of a one-hot posterior q(k | x) against the
    uniform prior 1/K at every position, KL = sum_k q_k log2(q_k K) = log2 K. The VQ-VAE's
    rate while its prior is uniform (times ln 2 for nats).

    Book: :eq:`ch19-kl`.
    """
    K = checks.count("K (the number of codes)", K, minimum=2)
    return checks.count("positions", positions) * math.log2(K)


# --- finite scalar quantization -----------------------------------------------------------
MAX_FSQ_LEVELS = 2**24  # a channel's levels: integers exact in float32
MAX_FSQ_CODES = 2**62   # prod of the levels: the int64 code index
MAX_FSQ_GRID = 2**20    # FSQ.grid()'s rows: every code, (K, d) (the chapter's 1,000)


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer, Minnen, Agustsson and Tschannen, ICLR 2024).

    levels: L_i for each of d channels, e.g. (8, 5, 5, 5): prod L_i = 1000 codes.
    Channel i is bounded to L_i levels and rounded with the straight-through gradient:

        f(z) = tanh(z + a) h - o,   h = (L - 1)(1 - eps) / 2,   o = 1/2 if L is even else 0,
                                    a = artanh(o / h)   (so that f(0) = 0 before rounding)
        z_q  = round(f(z)) / floor(L / 2)

    as the paper's reference code, with artanh where that code has tan (so that f(0) = 0
    exactly; the two differ little): odd L gives the levels -1, ..., 1 symmetrically; even L
    the integers -L/2, ..., L/2 - 1 over L/2 (for L = 8: -1, -0.75, ..., 0.75). The code
    index is mixed radix, channel 0 the lowest digit. No codebook to learn and no auxiliary
    loss: Quantized's two losses are zero.
    """

    def __init__(self, levels=(8, 5, 5, 5), eps: float = 1e-3):
        super().__init__()
        # float32 holds the integers exactly to 2^24 (bound and round run in float32); the
        # index is int64 (2^32 x 2^32 levels overflowed to negative indices)
        levels = [checks.count(f"levels[{i}] (the levels of channel {i})", L, minimum=2,
                               maximum=MAX_FSQ_LEVELS)
                  for i, L in enumerate(checks.sequence("levels", levels, "(8, 5, 5, 5)"))]
        if not levels:
            raise checks.ArgumentError("levels must name at least one channel, e.g. "
                                       "(8, 5, 5, 5)")
        if math.prod(levels) > MAX_FSQ_CODES:
            raise checks.ArgumentError(
                f"levels {tuple(levels)} make {math.prod(levels):,} codes, more than "
                f"{MAX_FSQ_CODES:,} = 2^62: the code index (int64) would overflow; use fewer "
                "levels or channels (Mentzer et al. use 2^8 to 2^16 codes)")
        self.levels = tuple(levels)
        self.eps = checks.real("eps", eps, low=0.0, high=1.0, open_high=True)
        if 2 in levels and self.eps == 0:
            raise checks.ArgumentError("eps must be > 0 with a channel of 2 levels: its shift "
                                       "artanh(1/2 / h) is infinite at h = 1/2 (eps = 0); use "
                                       "the default 1e-3")
        L = torch.tensor(levels, dtype=torch.float64)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), 0)
        self.register_buffer("basis", basis.long(), persistent=False)
        self.register_buffer("half_width", (L // 2).float(), persistent=False)
        # h = (L - 1)(1 - eps) / 2 as the paper's code; for L = 2 that is below the offset
        # 1/2, whose artanh(o / h) is then NaN: there h = (1 + eps) / 2, as
        # vector-quantize-pytorch has it for every L (f then spans -1 - eps .. eps, which
        # rounds to the two levels -1 and 0). Every other L keeps the paper's h.
        half_l = torch.where(L == 2, (1 + self.eps) / 2, (L - 1) * (1 - self.eps) / 2)
        offset = torch.where(L % 2 == 0, 0.5, 0.0)
        self.register_buffer("half_l", half_l.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l).float(), persistent=False)

    @property
    def K(self) -> int:
        """The number of codes, prod L_i."""
        return math.prod(self.levels)

    @property
    def D(self) -> int:
        """The number of channels it quantizes, len(levels)."""
        return len(self.levels)

    def _per_channel(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, 1, 1)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) = tanh(z + a) h - o per channel, (B, d, H, W): values within the levels."""
        return self._bound(check_latents("z", z, self.D))

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        c = self._per_channel
        return torch.tanh(z + c(self.shift).to(z)) * c(self.half_l).to(z) - \
            c(self.offset).to(z)

    def forward(self, z: torch.Tensor) -> Quantized:
        """z: (B, d, H, W) -> Quantized: z_q = round(f(z)) / floor(L / 2) straight through,
        the code indices (B, H, W), zero losses.

        Book: :eq:`ch19-fsq`.
        """
        check_latents("z", z, self.D)
        b = self._bound(z)
        z_q = straight_through(torch.round(b), b) / self._per_channel(self.half_width).to(z)
        zero = z.new_zeros(len(z))
        return Quantized(z_q, self._indices(self._digits(z_q.detach())), zero, zero)

    def _digits(self, z_q: torch.Tensor) -> torch.Tensor:
        c = self._per_channel
        return z_q * c(self.half_width).to(z_q) + c(self.half_width).to(z_q)

    def _indices(self, digits: torch.Tensor) -> torch.Tensor:
        return (torch.round(digits).long() * self._per_channel(self.basis)).sum(1)

    def codes_to_indices(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W) quantized values -> (B, H, W) int64: sum_i (z_i w_i + w_i) B_i,
        w_i = floor(L_i / 2), B_i = prod_{j < i} L_j. Every value must be one of its
        channel's levels (give or take 1e-3 of a level's spacing): a value off them mapped
        to an index past K, NaN to -2^63. One device sync (forward skips the check)."""
        checks.tensor("z_q", z_q, floating=True)
        if z_q.dim() != 4 or z_q.shape[1] != self.D:
            raise checks.ArgumentError(f"z_q must be quantized values (B, {self.D}, H, W), "
                                       f"got shape {tuple(z_q.shape)}")
        digits = self._digits(z_q)
        top = self._per_channel(torch.tensor(self.levels, device=z_q.device) - 1).to(z_q)
        off = ~((digits >= -1e-3) & (digits <= top + 1e-3)
                & ((digits - digits.round()).abs() <= 1e-3))  # NaN too
        if bool(off.any()):
            i = int(off.nonzero()[0, 1])
            raise checks.ArgumentError(
                f"z_q holds {int(off.sum())} value(s) off the levels (channel {i} has "
                f"{self.levels[i]}: (k - {int(self.half_width[i])}) / "
                f"{int(self.half_width[i])}, k = 0..{self.levels[i] - 1}), or NaN: pass what "
                "FSQ returns (its z_q), or indices_to_codes(indices)")
        return self._indices(digits)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 in 0..K-1 -> (B, d, H, W) the quantized values."""
        checks.tensor("indices", indices, dims=3)
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise checks.ArgumentError(f"indices must be an integer tensor of codes "
                                       f"0..{self.K - 1}, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.K):
            raise checks.ArgumentError(
                f"indices must hold codes 0..{self.K - 1} (prod of levels {self.levels}), "
                f"got values in [{int(indices.min())}, {int(indices.max())}]")
        c = self._per_channel
        digits = indices[:, None] // c(self.basis) % c(torch.tensor(self.levels,
                                                                    device=indices.device))
        w = c(self.half_width)
        return (digits.float() - w) / w

    def grid(self) -> torch.Tensor:
        """Every code, (K, d): row k is the code of index k. At most MAX_FSQ_GRID = 2^20
        codes (a table of every code; the chapter's 1,000)."""
        checks.size("K (the codes of grid(), prod of the levels)", self.K, MAX_FSQ_GRID,
                    "grid() lists every code; (1000,) * 3 levels asked for 10^9 rows. Draw "
                    "from indices_to_codes on the indices you need instead")
        return self.indices_to_codes(torch.arange(self.K).view(-1, 1, 1))[:, :, 0, 0]
