"""ssmis: semi-supervised medical image segmentation behind one interface."""

__version__ = "0.1.0"
