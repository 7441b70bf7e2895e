"""The book's stored models: one function per chapter model that builds it and
load-or-trains it with the active profile's recipe.

Chapter 10 compares the models of chapters 6, 7 and 9; calling the same function with the
same profile and data gives the same checkpoint identity, so it loads instead of retraining.
Each function returns the trained model (EMA weights where the recipe keeps an average) and
the `companion.train.FitResult`.

One module per family, each name re-exported here (`companion.recipes.ddpm` is
`companion.recipes.pixel.ddpm`): `vaes` (chapter 1's autoencoder, chapters 6 and 7's VAEs,
chapter 10's 8-bit VAEs), `pixel` (chapter 8's toy noise predictor, chapter 9's DDPM and its
classifier, chapter 16's conditional DDPM, guidance and noisy classifier), `latents`
(chapter 11), `flows` (chapter 13's flow matching, chapter 15's few-step students),
`discrete` (chapter 14's masked diffusion, chapter 19's VQ-VAEs and code priors),
`preconditioned` (chapter 17's EDM), `variational` (chapter 18's VDM), `transformers`
(chapter 21's DiTs and captions), `language` (chapter 22), and `common`, what they share
(the U-Net skeleton, its warm-up and clipping, an early run resumed, the argument checks). A
module imports only `common` and the modules named before it, never a later one.
"""

from __future__ import annotations

# each family's names, its private helpers too (tests reach recipes._profile)
from .common import (  # noqa: F401  (private names too)
    DDPM_CLIP,
    DDPM_WARMUP,
    _at_steps,
    _check_unit_images,
    _continue,
    _labelled_images,
    _prefix,
    _profile,
    _unet_recipe,
    _warm_up,
)
from .discrete import (  # noqa: F401  (private names too)
    MASKED_SCHEDULE,
    PRIOR_KINDS,
    PRIOR_LONGER,
    VQ_COST_RATIO,
    VQ_D,
    VQ_K,
    VQ_LEVELS,
    VQ_RESTART_AFTER,
    VQ_VARIANTS,
    _vq_model,
    chosen_variant,
    code_prior,
    code_prior_checkpoint,
    long_stages,
    masked_diffusion,
    masked_settings,
    vq_priors,
    vq_settings,
    vq_steps,
    vqvae,
    vqvae_start,
)
from .flows import (  # noqa: F401  (private names too)
    _flow_student,
    _student_fit,
    _weights_norm,
    consistency_distillation,
    fewstep_settings,
    flow_checkpoint,
    flow_matching,
    progressive_distillation,
    reflow,
    reflow_couplings,
)
from .language import (  # noqa: F401  (private names too)
    ENGLISH_LENGTH,
    LM_KINDS,
    LM_LONGER,
    _lm_kind,
    english_windows,
    lm_bits,
    lm_checkpoint,
    lm_model,
    lm_network,
    lm_settings,
    lm_snapshots,
    toy_text,
)
from .latents import (
    LATENT_DIM,
    LATENT_KL_WEIGHT,
    LATENT_P_UNCOND,
    latent_checkpoint,
    latent_denoiser,
    latent_settings,
    latent_vae,
)
from .pixel import (
    COND_P_UNCOND,
    classifier,
    ddpm,
    ddpm_checkpoint,
    ddpm_cond,
    ddpm_diffusion,
    ddpm_settings,
    eps_function,
    guided_eps_function,
    network_function,
    noisy_classifier,
    noisy_classifier_settings,
    snapshots,
    toy_eps,
    toy_eps_settings,
)
from .preconditioned import (
    denoiser_function,
    edm,
    edm_checkpoint,
)
from .transformers import (  # noqa: F401  (private names too)
    ATTRIBUTE_P_DROP,
    CAPTION_P_UNCOND,
    DIT_LONGER,
    DIT_PATCH,
    DIT_SIZES,
    _network_flops,
    caption_batch,
    ch21_checkpoint,
    ch21_eps_function,
    ch21_model,
    ch21_network,
    ch21_snapshots,
    ch21_updates,
    dit_patch,
    dit_settings,
    dit_sizes,
    equal_flops_steps,
    network_flops,
    text_levels,
)
from .vaes import (  # noqa: F401  (private names too)
    AE_HIDDEN,
    AE_LR,
    AE_NOISE,
    AE_WEIGHT,
    HVAE_HIDDEN,
    HVAE_LATENTS,
    VAE_BATCH,
    VAE_LR,
    VAE_WARMUP_FRACTION,
    _elbo_fit,
    chapter1_autoencoder,
    eight_bit_vae,
    hierarchical_vae,
    single_level_vae,
    vae_epochs,
    warmup_steps,
)
from .variational import (  # noqa: F401  (private names too)
    VDM_STEPS_RANGE,
    VDM_WEIGHTINGS,
    _vdm_model,
    vdm,
    vdm_checkpoint,
    vdm_eps_function,
    vdm_sampler,
)

__all__ = [
    # common
    "DDPM_CLIP", "DDPM_WARMUP",
    # vaes
    "AE_HIDDEN", "AE_LR", "AE_NOISE", "AE_WEIGHT", "chapter1_autoencoder", "VAE_BATCH",
    "VAE_LR", "VAE_WARMUP_FRACTION", "vae_epochs", "warmup_steps", "single_level_vae",
    "HVAE_LATENTS", "HVAE_HIDDEN", "hierarchical_vae", "eight_bit_vae",
    # pixel
    "toy_eps_settings", "toy_eps", "ddpm_settings", "ddpm_diffusion", "ddpm_checkpoint", "ddpm",
    "snapshots", "network_function", "eps_function", "classifier", "COND_P_UNCOND", "ddpm_cond",
    "guided_eps_function", "noisy_classifier_settings", "noisy_classifier",
    # latents
    "LATENT_DIM", "LATENT_KL_WEIGHT", "LATENT_P_UNCOND", "latent_settings", "latent_vae",
    "latent_checkpoint", "latent_denoiser",
    # flows
    "flow_checkpoint", "flow_matching", "fewstep_settings", "reflow_couplings", "reflow",
    "progressive_distillation", "consistency_distillation",
    # discrete
    "MASKED_SCHEDULE", "masked_settings", "masked_diffusion", "VQ_K", "VQ_D", "VQ_LEVELS",
    "VQ_RESTART_AFTER", "VQ_COST_RATIO", "VQ_VARIANTS", "PRIOR_KINDS",
    "PRIOR_LONGER", "long_stages", "vq_settings",
    "vq_steps", "vqvae_start", "vqvae", "chosen_variant", "vq_priors", "code_prior_checkpoint",
    "code_prior",
    # preconditioned
    "edm_checkpoint", "edm", "denoiser_function",
    # variational
    "VDM_STEPS_RANGE", "VDM_WEIGHTINGS", "vdm_checkpoint", "vdm", "vdm_eps_function",
    "vdm_sampler",
    # transformers
    "DIT_SIZES", "DIT_PATCH", "dit_patch", "dit_sizes", "CAPTION_P_UNCOND", "ATTRIBUTE_P_DROP",
    "DIT_LONGER",
    "dit_settings",
    "ch21_network", "network_flops", "equal_flops_steps", "ch21_updates", "text_levels",
    "caption_batch", "ch21_checkpoint", "ch21_model", "ch21_snapshots", "ch21_eps_function",
    # language
    "LM_KINDS", "LM_LONGER", "lm_settings", "toy_text", "ENGLISH_LENGTH", "english_windows",
    "lm_network", "lm_checkpoint", "lm_model", "lm_snapshots", "lm_bits",
]
