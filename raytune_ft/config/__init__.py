"""Config stage: the typed ``JobConfig`` and the one loader that reads YAML into it.
Imports nothing else of raytune_ft, so every stage (and the dashboard) can depend on it."""

from .loader import (
    ConfigError,
    ConfigWarning,
    InputError,
    dump_config,
    llamafactory_translation,
    load_config,
    parse_overrides,
    with_values,
)
from .schema import (
    SERVED_NAME,
    AdapterConfig,
    AutoscalingConfig,
    DataConfig,
    ExportConfig,
    JobConfig,
    MethodConfig,
    ModelConfig,
    ScalingConfig,
    SearchDimension,
    ServeConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "SERVED_NAME",
    "AdapterConfig",
    "AutoscalingConfig",
    "ConfigError",
    "ConfigWarning",
    "DataConfig",
    "ExportConfig",
    "InputError",
    "JobConfig",
    "MethodConfig",
    "ModelConfig",
    "ScalingConfig",
    "SearchDimension",
    "ServeConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "dump_config",
    "llamafactory_translation",
    "load_config",
    "parse_overrides",
    "with_values",
]
