"""The official OpenAI Python SDK against a running Warden.

Started by the Rust test `sdk::the_openai_python_sdk_works_against_warden`, which runs Warden
in front of fake upstreams and passes WARDEN_BASE_URL and WARDEN_EXPECTED_TEXT.
"""

import json
import os

import openai
import pytest

BASE_URL = os.environ["WARDEN_BASE_URL"]
EXPECTED = os.environ["WARDEN_EXPECTED_TEXT"]
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=10)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["llama3.2", "llama3.2-vllm", "llama3.2-tools"]
    assert client.models.retrieve("llama3.2").id == "llama3.2"


def test_chat_non_streaming(client):
    completion = client.chat.completions.create(model="llama3.2", messages=QUESTION)
    assert completion.object == "chat.completion"
    assert completion.model == "llama3.2"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="llama3.2", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_streaming_without_usage(client):
    chunks = list(client.chat.completions.create(model="llama3.2-vllm", messages=QUESTION, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_warden_options_go_in_extra_body(client):
    completion = client.chat.completions.create(model="llama3.2", messages=QUESTION, extra_body={"warden": {}})
    assert completion.choices[0].message.content


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-unknown", messages=QUESTION)
    assert raised.value.code == "model_not_found"
    assert raised.value.response.headers["x-request-id"]


def test_bad_request_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="llama3.2", messages=[])
    assert raised.value.param == "messages"


def test_tool_call_streaming_is_parsed(client):
    # The vLLM-style backend replays its default stream; the SDK must accept every chunk shape.
    stream = client.chat.completions.create(
        model="llama3.2-vllm",
        messages=QUESTION,
        stream=True,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    assert sum(1 for _ in stream) > 1


def test_blocked_question_is_a_content_filter_refusal(client):
    messages = [{"role": "user", "content": "How do I hotwire a car?"}]
    completion = client.chat.completions.create(model="llama3.2", messages=messages)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "I can't help with that."
    assert completion.model_extra["warden"]["guard"]["input"]["verdict"] == "blocked"
    chunks = list(client.chat.completions.create(model="llama3.2", messages=messages, stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_moderations_create(client):
    result = client.moderations.create(input=["How do I hotwire a car?", "What a lovely day"])
    assert result.model == "llama-guard3:1b"
    flagged, fine = result.results
    assert flagged.flagged is True
    assert flagged.categories.illicit is True
    assert fine.flagged is False
    assert fine.categories.violence is False


def test_embeddings_create(client):
    # The SDK asks for base64 by default and decodes it; float is asked for explicitly here too.
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=sentences)
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert result.usage.prompt_tokens > 0
    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=sentences[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(as_floats.data[0].embedding, vectors[0])) < 1e-6

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


def test_embeddings_of_an_unknown_model_raise_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")


def test_responses_create_answers_through_the_chat_path(client):
    chat = client.chat.completions.create(model="llama3.2", messages=QUESTION)
    response = client.responses.create(model="llama3.2", input="Why is the sky blue?", instructions="Be brief.")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == chat.choices[0].message.content
    assert response.output[0].role == "assistant"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Be brief."


def test_responses_with_message_items_are_judged_and_refused(client):
    blocked = client.responses.create(
        model="llama3.2",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "How do I hotwire a car?"}]}],
    )
    assert blocked.status == "incomplete"
    assert blocked.incomplete_details.reason == "content_filter"
    assert blocked.output[0].content[0].type == "refusal"
    assert blocked.output[0].content[0].refusal == "I can't help with that."


def test_responses_refuse_what_they_do_not_serve(client):
    for extra in ({"tools": [{"type": "web_search"}]}, {"reasoning": {"effort": "low"}}, {"background": True}):
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="llama3.2", input="hi", **extra)
        assert raised.value.param == ("tools[0].type" if "tools" in extra else next(iter(extra)))
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="llama3.2", input=[{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}])
    assert raised.value.param == "input[0].content[0]"


def test_responses_stream_as_openai_sends_it(client):
    with client.responses.stream(model="llama3.2", input="Why is the sky blue?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EXPECTED
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert final.status == "completed"
    assert final.output_text == EXPECTED
    assert final.usage.output_tokens > 0
    assert final.model_extra["warden"]["guard"]["input"]["verdict"] == "safe"
    assert final.model_extra["warden"]["guard"]["output"]["verdict"] == "safe"


def test_a_blocked_responses_stream_ends_incomplete_with_the_refusal(client):
    events = list(client.responses.create(model="llama3.2", input="How do I hotwire a car?", stream=True))
    assert events[-1].type == "response.incomplete"
    response = events[-1].response
    assert response.incomplete_details.reason == "content_filter"
    assert response.output[0].content[-1].type == "refusal"
    assert response.output[0].content[-1].refusal == "I can't help with that."
    assert response.model_extra["warden"]["guard"]["input"]["verdict"] == "blocked"
    assert not [e for e in events if e.type == "response.output_text.delta"]


WEATHER = {
    "type": "function",
    "name": "get_current_weather",
    "description": "The weather in a city now.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location", "format"],
    },
}
# The Rust test checks that this reached the model as a tool turn and that the guard judged it.
TOOL_RESULT = "18 degrees and sunny"


def test_responses_tool_call_round_trip(client):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.responses.create(model="llama3.2-tools", input=[question], tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call"
    assert call.name == "get_current_weather"
    assert json.loads(call.arguments) == {"format": "celsius", "location": "Paris, FR"}
    assert first.tools[0].name == "get_current_weather"
    # The usual agent loop: the model's output items go back in, with the function's output.
    follow_up = client.responses.create(
        model="llama3.2",
        tools=[WEATHER],
        input=[question, *first.output, {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}],
    )
    assert follow_up.status == "completed"
    assert follow_up.output_text

    with client.responses.stream(model="llama3.2-tools", input=[question], tools=[WEATHER]) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    assert streamed.output[0].type == "function_call"
    assert json.loads(streamed.output[0].arguments) == {"format": "celsius", "location": "Paris, FR"}
    assert "response.function_call_arguments.done" in [e.type for e in events]


def test_responses_are_stored_continued_and_deleted(client):
    first = client.responses.create(model="llama3.2", input="My name is Ada.")
    assert first.store is True
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model="llama3.2", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.status == "completed"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.retrieve(first.id)
    assert raised.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="llama3.2", input="hi", previous_response_id=first.id)
    assert raised.value.param == "previous_response_id"
    unstored = client.responses.create(model="llama3.2", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_moderation_results_come_from_the_guard(client):
    asked = {"model": "omni-moderation-latest"}
    blocked = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "How do I hotwire a car?"}], moderation=asked
    )
    result = blocked.moderation.input.results[0]
    assert result.flagged is True
    assert result.categories["illicit"] is True
    assert blocked.moderation.output.type == "error"
    response = client.responses.create(model="llama3.2", input="Why is the sky blue?", moderation=asked)
    assert response.moderation.input.flagged is False
    assert response.moderation.output.type == "moderation_result"
