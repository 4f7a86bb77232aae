"""An OpenAI-compatible chat-completions judge with every reply cached on disk by (model, request)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# Environment fallbacks when a spec names no judge (the API key is only ever read from the environment).
ENV_URL = "SEAGRID_JUDGE_URL"
ENV_MODEL = "SEAGRID_JUDGE_MODEL"
ENV_CACHE = "SEAGRID_JUDGE_CACHE"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_CACHE = Path("results/judge_cache")


class JudgeError(RuntimeError):
    """The judge endpoint failed or is not configured; the message never contains the API key."""


class JudgeConfig(BaseModel):
    """Where the judge lives. `base_url` is the API root (".../v1"); the key is read from `api_key_env`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str
    api_key_env: str = DEFAULT_KEY_ENV
    cache_dir: Path = DEFAULT_CACHE
    timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    retry_wait_s: float = Field(default=2.0, ge=0)  # doubled after each failed attempt, at most 30 s

    @classmethod
    def from_env(cls, **overrides: object) -> JudgeConfig:
        """Fields not given come from SEAGRID_JUDGE_URL / SEAGRID_JUDGE_MODEL / SEAGRID_JUDGE_CACHE."""
        values: dict[str, object] = {}
        for name, env in (("base_url", ENV_URL), ("model", ENV_MODEL), ("cache_dir", ENV_CACHE)):
            if os.environ.get(env):
                values[name] = os.environ[env]
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [n for n in ("base_url", "model") if n not in values]
        if missing:
            raise JudgeError(
                f"no judge {' and '.join(missing)}: name them in the spec's judge settings or set "
                f"{ENV_URL} and {ENV_MODEL}"
            )
        return cls.model_validate(values)


class JudgedMetrics(dict[str, float]):
    """Metrics plus the judge model that produced them; a report shows `judge_model` beside the numbers."""

    def __init__(self, metrics: Mapping[str, float], judge_model: str) -> None:
        super().__init__(metrics)
        self.judge_model = judge_model


class Judge:
    """Chat completions with a disk cache: the same (model, messages, temperature, max_tokens) is asked once."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.requests_sent = 0  # HTTP requests actually made (a rerun over a warm cache makes none)

    @property
    def model(self) -> str:
        return self.config.model

    def _cache_path(self, payload: Mapping[str, object]) -> Path:
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return self.config.cache_dir / digest[:2] / f"{digest}.json"

    def complete(self, messages: Sequence[Mapping[str, str]], temperature: float, max_tokens: int) -> str:
        payload = {
            "model": self.config.model,
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        path = self._cache_path(payload)
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        content = self._post(payload)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps({"request": payload, "content": content}, ensure_ascii=False), encoding="utf-8"
        )
        tmp.replace(path)  # atomic: a concurrent reader sees the whole reply or none
        return content

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.config.api_key_env)
        return text.replace(key, "***") if key else text

    def _post(self, payload: Mapping[str, object]) -> str:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        shown = self._scrub(url)  # some gateways take the key in the URL: never print it
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps(payload).encode()
        for attempt in range(1, self.config.max_attempts + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    reply = json.loads(response.read().decode())
                return str(reply["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as err:
                detail = self._scrub(err.read().decode(errors="replace")[:300])
                retryable = err.code == 429 or err.code >= 500
                if not retryable or attempt == self.config.max_attempts:
                    raise JudgeError(f"judge {shown} answered HTTP {err.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                if attempt == self.config.max_attempts:
                    raise JudgeError(f"judge {shown} unreachable: {self._scrub(str(err))}") from None
            except (KeyError, IndexError, ValueError) as err:
                raise JudgeError(
                    f"judge {shown} reply is not a chat completion ({type(err).__name__})"
                ) from None
            log.warning("judge %s attempt %d failed; retrying", shown, attempt)
            time.sleep(min(self.config.retry_wait_s * 2 ** (attempt - 1), 30.0))
        raise JudgeError(f"judge {shown}: no reply")  # unreachable: the loop returns or raises
