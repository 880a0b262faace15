"""The engine: pure PyTorch and numpy stages, driven by the CLI, the TUI and the tests alike."""
