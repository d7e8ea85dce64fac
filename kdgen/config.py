"""Typed, validated experiment config: YAML files plus dotted ``KEY=VALUE`` overrides.

Every field has a default, so an empty config is the embedded default experiment (digits).
Mistakes become :class:`~kdgen.errors.ConfigError` with one line that names the field.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from kdgen import arms as arm_registry
from kdgen import plugins
from kdgen.data.settings import AugmentConfig, DataConfig  # noqa: F401 - composed here, and named as kdgen.config's
from kdgen.errors import ConfigError
from kdgen.methods import METHODS as DISTILL_METHODS
from kdgen.settings import Settings
from kdgen.training.settings import RuntimeConfig, TrainConfig  # noqa: F401 - composed here
from kdgen.tolerance import METHODS

plugins.load()  # plug-ins register their arms, methods and sources before the config's sections are built

DEFAULT_ARMS = ("baseline", "strict", "tolerant")
# Keys that moved to the runtime section: how a run executes, not what it computes.
MOVED_TO_RUNTIME = {"train": ("device", "precision", "compile", "channels_last"), "data": ("workers",)}
_warned: set[str] = set()  # the recipe warnings this process has printed (one line each)


def _known_model(value: str) -> str:
    from kdgen.models import check_name

    return check_name(value)


class ModelConfig(Settings):
    """The architecture of every generation of every arm (unless ``generations.models`` names one per generation)."""

    omitted_when_unset = ("kwargs", "pretrained")

    # A registered model (`kdgen models`): cnn, cnn-tiny, mlp, resnet20/32/56/110, wrn-16-2, densenet-bc-100, resnet18...
    # or any of timm's architectures as timm/<architecture> (the [timm] extra; `kdgen models --timm PATTERN`).
    name: str = "cnn"
    # The model library's own options for timm/ models, e.g. {drop_path_rate: 0.1} (kdgen's own models take none).
    kwargs: dict[str, Any] | None = None
    # Start the patriarch (generation 0, and only it) from the library's pretrained weights (timm/ models); the
    # weights must be on this machine (Hugging Face cache) or reachable. None: no.
    pretrained: bool | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _known_model(value)


class GenerationsConfig(Settings):
    """How many generations, for which arms, and each generation's model."""

    omitted_when_unset = ("models",)

    # Students after the patriarch (generation 0): count + 1 models per arm and seed.
    count: int = Field(2, ge=0, le=100)
    # Registered arms (kdgen.arms): baseline, strict, tolerant, snapshot, ...
    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS))
    # The model of each generation, [PATRIARCH, GEN1, ...], the last repeating for later generations: [resnet20,
    # cnn-tiny] is a resnet20 teacher educating cnn-tiny students. The baseline arm then trains each generation's
    # architecture alone, so "student - baseline" is the student against its own architecture. None: model.name for all.
    models: list[str] | None = None

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one model, or leave it unset (model.name for every generation)")
            for name in value:
                _known_model(name)
        return value


    @field_validator("arms")
    @classmethod
    def _known_unique_arms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one arm is needed")
        if len(set(value)) != len(value):
            raise ValueError("arms must not repeat")
        for name in value:
            if name not in arm_registry.names():
                close = difflib.get_close_matches(name, arm_registry.names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown arm {name!r}{hint}; choose from {', '.join(arm_registry.names())}")
        return value


# ``tolerance:`` is one of the registered methods (kdgen.tolerance), told apart by ``method``.
ToleranceConfig = Annotated[Union[tuple(METHODS.values())], Field(discriminator="method")]


# ``distill:`` is one of the registered student methods (kdgen.methods), told apart by ``method`` (default kd).
DistillConfig = Annotated[Union[tuple(DISTILL_METHODS.values())], Field(discriminator="method")]
# Discriminated sections: {section: (registry, default method)}.
TAGGED_SECTIONS = {"tolerance": (METHODS, "tsd"), "distill": (DISTILL_METHODS, "kd")}


class LogConfig(Settings):
    """What a run shows while it runs, and where it is recorded besides the run folder."""

    omitted_when_unset = ("mlflow_uri", "mlflow_experiment")

    # TensorBoard scalars (each unit's losses and learning rate per epoch) under DIR/tensorboard.
    tensorboard: bool = False
    # The progress bar (steps, ETA, the last epoch's losses).
    progress: bool = True
    # MLflow tracking (the [mlflow] extra): a parent run per kdgen run (the config as params), a nested run per
    # unit (its losses and learning rate per epoch, its final rows as metrics), the report as artifacts
    # (kdgen.running.tracking). A failing tracking server turns it off with one warning; training goes on.
    mlflow: bool = False
    # Tracking URI, e.g. http://host:5000 or sqlite:///mlflow.db; None: MLFLOW_TRACKING_URI, else MLflow's default.
    mlflow_uri: str | None = None
    # The MLflow experiment the runs go to; None: "kdgen".
    mlflow_experiment: str | None = None


class _ConfigBase(Settings):
    """The whole experiment. ``kdgen run`` with no config uses these defaults.

    Arms with settings of their own (kdgen.arms) add a section each, e.g. ``snapshot``.
    """

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    generations: GenerationsConfig = GenerationsConfig()
    tolerance: ToleranceConfig = METHODS["tsd"]()
    distill: DistillConfig = DISTILL_METHODS["kd"]()
    runtime: RuntimeConfig = RuntimeConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="before")
    @classmethod
    def _old_spellings_and_default_method(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for section, keys in MOVED_TO_RUNTIME.items():
            old = raw.get(section)
            for key in keys:
                if isinstance(old, dict) and key in old:
                    raise ValueError(f"{section}.{key} has moved to runtime.{key} (how a run executes, "
                                     f"not what it computes)")
        for section, (_, default) in TAGGED_SECTIONS.items():
            given = raw.get(section)
            if isinstance(given, dict) and "method" not in given:
                raw = {**raw, section: {**given, "method": default}}  # the default method
        return raw

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one seed is needed")
        if len(set(value)) != len(value):
            raise ValueError("seeds must not repeat")
        return value

    @model_validator(mode="after")
    def _model_options(self) -> "_ConfigBase":
        from kdgen.models import namespaced

        if self.model.kwargs and not any(namespaced(name) for name in self.chain_models):
            raise ValueError("model.kwargs: no model of this chain takes options (kdgen's own architectures are "
                             "fixed; kwargs are for timm/<architecture>)")
        if self.model.pretrained and not namespaced(self.model_of(0)):
            raise ValueError(f"model.pretrained: the patriarch {self.model_of(0)!r} has no pretrained weights "
                             "(they are for timm/<architecture>)")
        return self

    @model_validator(mode="after")
    def _recipe_warnings(self) -> "_ConfigBase":
        """Settings that cannot do what they say with this recipe (DKD's warm-up longer than the training): one line
        each on stderr, once per process (a sweep validates a config per grid point)."""
        if self.generations.count >= 1:  # only students use the distill section
            for line in self.distill.recipe_warnings(self.train.epochs):
                if line not in _warned:
                    _warned.add(line)
                    print(f"kdgen: warning: {line}", file=sys.stderr, flush=True)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def model_of(self, generation: int) -> str:
        """The registered model of ``generation`` (0: the patriarch): ``generations.models``, else ``model.name``."""
        models = self.generations.models
        if not models:
            return self.model.name
        return models[min(generation, len(models) - 1)]

    @property
    def chain_models(self) -> list[str]:
        """The model of every generation of a chain, patriarch first."""
        return [self.model_of(g) for g in range(self.generations.count + 1)]

    @property
    def changes_architecture(self) -> bool:
        """Whether some generation's architecture differs from the patriarch's."""
        return len(set(self.chain_models)) > 1


Config = create_model("Config", __base__=_ConfigBase, __module__=__name__,
                      **{section: (model, model()) for section, model in arm_registry.settings_sections().items()})


def resolve_k(cfg: Config, num_classes: int) -> Config:
    """``cfg`` with data-dependent tolerance settings (TSD's ``k: auto``) made concrete."""
    resolved = cfg.tolerance.resolved(num_classes)
    return cfg if resolved is cfg.tolerance else cfg.model_copy(update={"tolerance": resolved})


def upgrade_recorded(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml that kdgen wrote before the runtime section and the per-method tolerance keys, in
    today's spelling. Only for run folders (kdgen's own records, e.g. to resume or merge them); a config a
    user writes gets a one-line error naming the new key instead."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    for section, keys in MOVED_TO_RUNTIME.items():
        for key in keys:
            if isinstance(raw.get(section), dict) and key in raw[section]:
                raw.setdefault("runtime", {})[key] = raw[section].pop(key)
    tolerance = raw.get("tolerance")
    if isinstance(tolerance, dict) and tolerance.get("method", "tsd") in METHODS:
        method = METHODS[tolerance.get("method", "tsd")]
        renamed = {method.renamed.get(key, key): value for key, value in tolerance.items()}
        raw["tolerance"] = {key: value for key, value in renamed.items() if key in method.model_fields}
    return raw


def format_validation_error(error: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """The first error of validating against ``root`` (default :class:`Config`) as one line naming the key,
    with a did-you-mean for unknown keys."""
    first = error.errors()[0]
    parts = [str(part) for part in first["loc"]]
    method_fields, method = None, None
    registry = TAGGED_SECTIONS[parts[0]][0] if parts and parts[0] in TAGGED_SECTIONS else None
    if registry is not None and len(parts) > 1 and parts[1] in registry:
        method = parts.pop(1)  # the union's tag is not a key the user wrote
        method_fields = list(registry[method].model_fields)
    location = ".".join(parts)
    if first["type"] == "extra_forbidden":
        parent_path, _, leaf = location.rpartition(".")
        owners = [name for name, cls in (registry or {}).items() if name != method and leaf in cls.model_fields]
        if method is not None and owners and leaf not in method_fields:  # a key of another method
            return (f"{source}: {location!r} is not a key of {parent_path}.method {method!r} (a key of "
                    f"{', '.join(repr(o) for o in owners)}); give the {parent_path} section for {method!r}: "
                    f"{', '.join(k for k in method_fields if k != 'method')}")
        known = method_fields if method_fields is not None else _known_keys(parent_path, root or Config)
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean {'.'.join(filter(None, [parent_path, close[0]]))!r}?)" if close else ""
        return f"{source}: unknown key {location!r}{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        message = f"unknown method; choose one of {', '.join(registry or METHODS)}"
        location += ".method"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    if isinstance(value, dict) and first["type"] == "union_tag_invalid":
        shown = f" (got {value.get('method')!r})"
    return f"{source}: {location}: {message}{shown}" if location else f"{source}: {message}"


def _known_keys(dotted_parent: str, root: type[BaseModel]) -> list[str]:
    model = root
    for part in filter(None, dotted_parent.split(".")):
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and the value parsed as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form KEY=VALUE (e.g. train.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted override set (nested dicts are created as needed)."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load`` (never constructs Python objects)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" if not path.exists()
                          else f"config path {str(path)!r} is not a file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if loaded is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not a {type(loaded).__name__}")
    return loaded


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`, raising a one-line :class:`ConfigError`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    return build_config(apply_overrides(raw, overrides or []), source)
