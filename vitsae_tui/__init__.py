"""vitsae-tui: train a vision model, collect activations, train a JumpReLU SAE and browse its features."""

__version__ = "0.1.0"
