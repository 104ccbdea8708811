"""inspo: InSPO and the DPO family of preference-optimisation losses, on Lightning."""

__version__ = "0.1.0"
