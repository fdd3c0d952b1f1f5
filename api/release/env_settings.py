"""Settings read from the environment once, validated, frozen: the base both the API's and the probe's use.

A class declares each setting once, as a field whose validation alias is its
environment variable (README.md and docs/DESIGN.md name them). `from_env()`
reads the process environment through pydantic-settings; a plain constructor
(`Settings(max_batch_size=10)`) takes its arguments and the defaults, never the
environment. A bad value raises SettingsError, one line that starts with the
variable and the value given: `MAX_HEADER_BYTES='abc' is not a valid int`.
An empty number is unset (its default), as it always was.

Here, in api/release (which imports nothing else of the project), because the
load probe's limits are read by the API and the pipeline's release check alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

APP_CACHE = Path("gated-churn-model") / "probed"  # under the user's cache directory


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


# Why pydantic refused a value, as the service has always worded it (the variable and its value come first).
_WORDS = {
    "int_parsing": "is not a valid int",
    "int_from_float": "is not a valid int",
    "float_parsing": "is not a valid float",
    "finite_number": "must be a finite number",
}


class EnvSettings(BaseSettings):
    """Frozen, validated settings; `from_env()` reads them from the environment, by each field's variable."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True, protected_namespaces=()
    )
    reads_environment: ClassVar[bool] = False  # True only in the class `from_env` reads through

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Built by hand: its arguments and the defaults; `from_env` adds the environment."""
        return (init_settings, env_settings) if cls.reads_environment else (init_settings,)

    @classmethod
    def from_env(cls) -> Self:
        """The settings in the environment, defaults where unset; SettingsError names a bad value."""
        # Only the documented variables, spelled exactly: not a field's name (VERIFY_KEY_PEM), not `port`.
        only_documented = SettingsConfigDict(**{**cls.model_config, "case_sensitive": True, "validate_by_name": False})
        reading = type(f"{cls.__name__}FromEnv", (cls,), {"reads_environment": True, "model_config": only_documented})
        try:
            read = reading()
        except ValidationError as exc:
            raise SettingsError(_one_line(cls, exc)) from None
        return cls.model_validate(read.model_dump())  # the class asked for, with the values read

    @model_validator(mode="before")
    @classmethod
    def _empty_numbers_are_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        numbers = {
            name
            for field_name, field in cls.model_fields.items()
            if field.annotation in (int, float, int | None)
            for name in (field_name, field.validation_alias)
        }
        return {key: value for key, value in data.items() if not (value == "" and key in numbers)}


def _one_line(cls: type[BaseSettings], exc: ValidationError) -> str:
    """The first error, as `NAME='value' why`; a rule over several settings says itself."""
    error = exc.errors()[0]
    if not error["loc"]:  # a model validator's ValueError: its own words, which name the variables
        return str(error.get("ctx", {}).get("error", error["msg"]))
    field = cls.model_fields.get(str(error["loc"][0]))
    name = field.validation_alias if field is not None and isinstance(field.validation_alias, str) else error["loc"][0]
    ctx = error.get("ctx", {})
    why = _WORDS.get(error["type"])
    if why is None and "gt" in ctx:
        why = "must be positive" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}"
    if why is None and "ge" in ctx:
        why = f"must be at least {ctx['ge']}"
    if why is None and "le" in ctx:
        why = f"must be at most {ctx['le']}"
    return f"{name}={error['input']!r} {why or error['msg']}"


class ProbeSettings(EnvSettings):
    """How long a probe child may take, how much memory it may map, and where acceptances are remembered.

    The API and the CLI read the same variables (api/release/load_probe.py).
    """

    probe_timeout_s: float = Field(default=60.0, gt=0, validation_alias="PROBE_TIMEOUT_S")
    probe_memory_mb: int = Field(default=2048, gt=0, validation_alias="PROBE_MEMORY_MB")
    # PROBE_CACHE_DIR: unset, the user's cache directory; empty, no cache.
    probe_cache_dir: str | None = Field(default=None, validation_alias="PROBE_CACHE_DIR")
    xdg_cache_home: str | None = Field(default=None, validation_alias="XDG_CACHE_HOME")

    @property
    def probe_cache_path(self) -> Path | None:
        """Where probe acceptances are kept: PROBE_CACHE_DIR, else the user's cache directory; None: no cache."""
        if self.probe_cache_dir is not None:
            return Path(self.probe_cache_dir) if self.probe_cache_dir else None
        return Path(self.xdg_cache_home or Path.home() / ".cache") / APP_CACHE
