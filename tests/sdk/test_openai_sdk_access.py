"""The official OpenAI Python SDK against a Warden with API keys and limits: the SDK must raise its
own exception classes for each refusal, with OpenAI's retry headers.

Started by the Rust test `sdk::the_openai_python_sdk_raises_access_errors`, which passes
WARDEN_BASE_URL and the keys it configured.
"""

import os

import openai
import pytest

BASE_URL = os.environ["WARDEN_BASE_URL"]
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


def client(key):
    return openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=10)


def test_a_wrong_key_raises_authentication_error():
    with pytest.raises(openai.AuthenticationError) as raised:
        client("sk-not-a-key").chat.completions.create(model="llama3.2", messages=QUESTION)
    assert raised.value.code == "invalid_api_key"


def test_a_model_the_key_may_not_use_is_not_found():
    narrow = client(os.environ["NARROW_KEY"])
    assert [m.id for m in narrow.models.list()] == ["small"]
    with pytest.raises(openai.NotFoundError):
        narrow.chat.completions.create(model="llama3.2", messages=QUESTION)


def test_admin_routes_raise_permission_denied_for_other_keys():
    with pytest.raises(openai.PermissionDeniedError):
        client(os.environ["NARROW_KEY"]).get("/collections", cast_to=object)


def test_past_the_rate_limit_raises_rate_limit_error_with_retry_headers():
    limited = client(os.environ["LIMITED_KEY"])
    raw = limited.chat.completions.with_raw_response.create(model="llama3.2", messages=QUESTION)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    limited.chat.completions.create(model="llama3.2", messages=QUESTION)
    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(model="llama3.2", messages=QUESTION)
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
