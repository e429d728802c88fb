"""fenced: confine what processes may reach on the network with nftables."""

__version__ = "0.1.0"
