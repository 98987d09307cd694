"""A declarative reconciler for one AI workstation: load -> observe -> diff -> gate -> drive -> record."""

__version__ = "0.1.0"
