"""leakstyle: control style, brightness and colour of diffusion models through their initial noise."""

__version__ = "0.1.0"
