"""U-Net diffusion on imbalanced Fashion-MNIST (torch-based; imported only when used).

Modules: ``unet`` (the model), ``schedule`` (the DDPM schedule and its OU times, the forward step),
``ddpm`` (resumable training, ``train_unet``), ``sampling`` (deterministic DDIM), ``memorization``
(nearest neighbours, ``memorization_by_class``), ``classifier`` (cached CNN), ``quality`` (per-class Fréchet
distance, class histogram, per-class denoising loss), ``evaluation`` (``evaluate_run``: all checkpoints of a run
folder, theory beside measurement).
"""
