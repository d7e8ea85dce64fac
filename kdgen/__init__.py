"""kdgen: knowledge distillation in generations with tolerant teachers (Yang et al., AAAI 2019).

Quick use from Python::

    from kdgen import Config, run_generations, bundle_from_tensors
"""

__version__ = "0.1.0"
