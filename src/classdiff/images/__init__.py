"""U-Net diffusion on imbalanced Fashion-MNIST (torch-based; imported only when used).

Modules: ``fashion_mnist`` (idx files: look-up, validation, imbalanced subsets), ``stats`` (per-class
statistics and the theory's mixture for them), ``unet`` (the model), ``ddpm`` (schedules, resumable training,
``train_unet``, ``train_and_evaluate_from_config``), ``sampling`` (deterministic DDIM), ``memorization``
(nearest neighbours, ``memorization_by_class``), ``classifier`` (cached CNN), ``quality`` (per-class Fréchet
distance, class histogram, per-class denoising loss), ``evaluation`` (``evaluate_run``: all checkpoints of a run
folder, theory beside measurement).
"""
