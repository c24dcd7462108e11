"""p2prec: online-trained recommendation parameters, from trainer to every datacenter in seconds."""

__version__ = "0.1.0"
