"""Settings read from RELAY_* environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    template_env_allow: str = ""
    """Comma-separated globs of environment variable names templates may read with ``env``."""

    @property
    def template_env_globs(self) -> list[str]:
        return [part.strip() for part in self.template_env_allow.split(",") if part.strip()]
