"""U-Net diffusion on Fashion-MNIST (torch-based; imported only when used)."""
