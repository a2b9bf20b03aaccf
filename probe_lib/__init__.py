"""probe_lib: feature upsamplers for vision foundation models, probed with interactive segmentation.

Importing the package has no side effects (no downloads, no CUDA calls); import the submodules you
need: ``probe_lib.config``, ``probe_lib.backbones``, ``probe_lib.upsamplers``, ``probe_lib.model``, ...
"""

__version__ = "0.1.0"
