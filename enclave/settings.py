"""`serve`'s options in one place: each one's type and default, read from the command line, `VERINFER_*`
environment variables and a TOML or JSON config file, in that order of precedence.

The environment variable of an option is VERINFER_ and its name in capitals (`--max-body` is
VERINFER_MAX_BODY); a config file (`--config FILE` or VERINFER_CONFIG) holds the same names in snake case
(`max_body = 1048576`). enclave/cli.py builds its argparse options on these fields and gives argparse no
defaults of its own, so a default lives here and nowhere else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from protocol.inputs import MAX_BATCH_ELEMENTS

from .batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_S

ENV_PREFIX = "VERINFER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


class SettingsError(ValueError):
    """A value no source may give (wrong type, out of range, unknown key, unreadable file): a usage error."""


class ServeSettings(BaseSettings):
    """Every `serve` option. Field names are argparse destinations, config keys and (upper-cased, with the
    prefix) environment variable names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    config: Path | None = None
    nsm: Literal["sim", "nitro"] | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    vsock: int | None = Field(None, ge=0)
    models: Path = DEFAULT_MODELS
    pki_dir: Path | None = None
    max_body: int = Field(4 * 1024 * 1024, gt=0)
    max_elements: int = Field(MAX_BATCH_ELEMENTS, gt=0)
    batch_token_sha256: str | None = None
    batch_rate: float = Field(2.0, gt=0)
    access_log: str = "-"
    access_log_format: Literal["text", "json"] = "text"
    cors_origins: Annotated[list[str], NoDecode] = []
    shutdown_timeout: int = Field(10, ge=0)
    infer_max_batch: int = Field(DEFAULT_MAX_BATCH, ge=0)
    infer_batch_window_ms: float = Field(DEFAULT_WINDOW_S * 1000, ge=0)
    no_llm: bool = False
    llm_threads: int | None = Field(None, gt=0)
    llm_no_spin: bool = False
    llm_max_batch: int = Field(4, gt=0)
    llm_context: int = Field(2048, gt=0)
    llm_queue: int = Field(16, ge=0)
    llm_checkpoint_tokens: int = Field(32, gt=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        """From the environment: a JSON list or comma-separated origins."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Command line (init), environment, config file; no .env or secrets directory."""
        given = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        path = given.get("config") or os.environ.get(CONFIG_ENV)
        if not path:
            return init_settings, env_settings
        return init_settings, env_settings, config_file_source(settings_cls, Path(path))


def config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    """TOML or JSON by the file's suffix. A named file must exist: a typo must not mean "all defaults"."""
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if path.suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    raise SettingsError(f"config file {path}: name it *.toml or *.json")


def load_settings(given: dict[str, Any]) -> ServeSettings:
    """`given`: the options on the command line (only those: absent ones come from the other sources)."""
    try:
        return ServeSettings(**given)
    except SettingsError:
        raise
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(f"invalid serve settings: {problems}") from exc
    except (OSError, ValueError) as exc:  # unreadable or malformed config file
        raise SettingsError(f"cannot read the serve config: {exc}") from exc


def describe(name: str) -> str:
    """The help suffix of option `name`: its environment variable and its default."""
    field = ServeSettings.model_fields[name]
    default = field.default
    if isinstance(default, Path) and default == DEFAULT_MODELS:
        default = "the installation's models/"
    shown = "none" if default is None or default == [] else default
    return f"env {ENV_PREFIX}{name.upper()}; default {shown}"
