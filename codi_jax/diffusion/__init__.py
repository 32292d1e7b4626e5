"""Diffusion core: CoDi's DDPM schedule, the training loss, DDIM / DPM-Solver++ samplers and
classifier-free guidance, all over pytrees of latents that share one timestep."""
from codi_jax.diffusion.guidance import cfg_denoiser, concat_conditions, guide
from codi_jax.diffusion.loss import diffusion_loss, draw_t_and_noise
from codi_jax.diffusion.samplers import ddim_parameters, ddim_timesteps, dpm_timesteps, sample
from codi_jax.diffusion.schedule import Schedule, eps_from_prediction, eps_from_v, make_schedule, q_sample, v_target

__all__ = [
    "Schedule", "cfg_denoiser", "concat_conditions", "ddim_parameters", "ddim_timesteps",
    "diffusion_loss", "dpm_timesteps", "draw_t_and_noise", "eps_from_prediction", "eps_from_v", "guide",
    "make_schedule", "q_sample", "sample", "v_target",
]
