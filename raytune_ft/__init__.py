"""raytune_ft: distributed-first LLM fine-tuning on Ray.

The package mirrors the flow config -> data -> models -> train -> serve -> cli; import the stage
you need (``raytune_ft.config``, ``raytune_ft.train``, ...). Nothing heavy is imported here.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
