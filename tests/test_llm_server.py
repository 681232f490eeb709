"""The local OpenAI-compatible LLM server: started for real, asked for real, stopped for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TEST_LLM_PORT

from freshkb.core.errors import ConfigError
from freshkb.serving import llm_server
from freshkb.serving.llm_server import LlmServerConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _chat(config: LlmServerConfig, **body: object) -> dict[str, Any]:
    response = httpx.post(
        f"{config.base_url}/chat/completions",
        json={"model": config.model_alias, "temperature": 0, **body},
        timeout=120,
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def test_server_lists_the_bundled_model(llm: LlmServerConfig) -> None:
    state = llm_server.status(llm)
    assert state.running
    assert state.model == llm.model_alias
    assert state.model_path is not None and state.model_path.endswith(llm_server.MODEL_FILE)


def test_chat_completion_answers_with_token_usage(llm: LlmServerConfig) -> None:
    body = _chat(
        llm,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
    )
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 32
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stop_sequence_ends_the_answer_before_it(llm: LlmServerConfig) -> None:
    body = _chat(
        llm,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=64,
        stop=["5"],
    )
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "5" not in body["choices"][0]["message"]["content"]


def test_json_mode_answers_parseable_json(llm: LlmServerConfig) -> None:
    body = _chat(
        llm,
        messages=[{"role": "user", "content": 'Give the capital of France as {"capital": ...}.'}],
        max_tokens=64,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


def test_down_stops_the_server_and_closes_its_port(tmp_path: Path) -> None:
    # Its own server, so stopping it cannot pull the session server from under other tests.
    config = LlmServerConfig(port=TEST_LLM_PORT + 1, state_dir=tmp_path)
    llm_server.up(config)
    assert llm_server.is_listening(config.port)

    assert llm_server.down(config)

    assert not llm_server.is_listening(config.port)
    assert not llm_server.status(config).running
    assert not config.pid_file.exists()
    assert not llm_server.down(config)


def test_missing_model_file_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    config = LlmServerConfig(port=TEST_LLM_PORT + 2, model_path=tmp_path / "absent.gguf")
    with pytest.raises(ConfigError, match="FRESHKB_LLM_MODEL_PATH"):
        llm_server.up(config)
    assert not llm_server.is_listening(config.port)
