"""The official OpenAI Python SDK against the gateway: chat and responses, streaming and not,
tools, models, routing headers, and the errors the SDK must map to its exception types."""
import openai
import pytest
from openai import OpenAI

ACME = "sk-acme-demo"


def client(gateway, proxy="assistant", key=ACME, **kw):
    return OpenAI(base_url=f"{gateway}/acme/{proxy}/v1", api_key=key, **kw)


def test_chat_non_streaming_with_target_model(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "flagship"
    assert raw.headers["x-switchyard-model"] == "gpt-4o-2024-08-06"
    assert raw.headers["x-switchyard-fallback"] == "false"
    completion = raw.parse()
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_chat_streaming_with_usage(gateway):
    stream = client(gateway).chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_chat_tool_calls_round_trip(gateway):
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    c = client(gateway)
    first = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in call.function.arguments
    second = c.chat.completions.create(
        model="gpt-4o-mini",
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
    )
    assert second.choices[0].message.content


def test_responses_non_streaming_and_previous_response_id(gateway):
    c = client(gateway)
    first = c.responses.create(model="smart", input="Hello", instructions="Be brief.")
    assert first.status == "completed"
    assert first.model == "gpt-4o-2024-08-06"
    assert first.output_text
    follow = c.responses.create(model="smart", input="And then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id


def test_responses_streaming(gateway):
    events = list(client(gateway).responses.create(model="fast", input="Stream please", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens > 0


def test_models_list(gateway):
    ids = [m.id for m in client(gateway).models.list()]
    assert ids[:2] == ["openai/gpt-4o", "openai/gpt-4o-mini"]
    assert "smart" in ids


def test_unknown_model_uses_fallback_or_is_a_400(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="mistral/large", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-switchyard-fallback"] == "true"
    assert raw.parse().model == "gpt-4o-mini"
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway, proxy="support-bot").chat.completions.create(
            model="mistral/large", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.code == "model_not_found"
    assert "openai/gpt-4.1-mini" in err.value.message


def test_wrong_key_and_other_tenants_key_are_authentication_errors(gateway):
    for key in ["sk-wrong", "sk-globex-demo"]:
        with pytest.raises(openai.AuthenticationError) as err:
            client(gateway, key=key).chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.code == "invalid_api_key"


def test_upstream_rate_limit_reaches_the_sdk_as_rate_limit_error(gateway):
    with pytest.raises(openai.RateLimitError):
        client(gateway, max_retries=0).chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "[emulator:status=429,retry_after=0] hi"}]
        )


def test_a_stream_broken_midway_raises_in_the_sdk(gateway):
    stream = client(gateway).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "[emulator:drop=2] hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "ended the stream early" in str(err.value)


# Azure OpenAI behind the gateway (route `azure` of acme's `assistant`: deployment `gpt-4.1-prod`
# on deployment URLs). The SDK sees an OpenAI endpoint whatever the provider.

def test_azure_chat_streaming_and_not(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "azure"
    completion = raw.parse()
    assert completion.model == "gpt-4.1-2025-04-14"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    stream = client(gateway).chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "Stream a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # Azure's opening content-filter frame (empty id, no choices) was dropped.
    assert all(c.id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_azure_responses_streaming_and_not(gateway):
    c = client(gateway)
    first = c.responses.create(model="gpt-4.1", input="Hello")
    assert first.status == "completed"
    assert first.model == "gpt-4.1-2025-04-14"
    assert first.output_text
    follow = c.responses.create(model="gpt-4.1", input="And then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    events = list(c.responses.create(model="gpt-4.1", input="Stream", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text


def test_azure_content_filter_is_a_bad_request_error(gateway):
    for stream in [False, True]:
        with pytest.raises(openai.BadRequestError) as err:
            client(gateway, max_retries=0).chat.completions.create(
                model="gpt-4.1",
                messages=[{"role": "user", "content": "[azure:content_filter] hi"}],
                stream=stream,
            )
        assert err.value.code == "content_filter"
        assert err.value.param == "prompt"


# Gemini behind the gateway (routes `gemini` and `gemini-pro` of acme's `assistant`), translated
# to Gemini's native generateContent and back. The SDK sees an OpenAI endpoint whatever the
# provider.

def test_gemini_chat_streaming_and_not(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gemini", messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "gemini"
    assert raw.headers["x-switchyard-provider"] == "gemini"
    completion = raw.parse()
    assert completion.model == "gemini-2.5-flash"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    stream = client(gateway).chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "Stream a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_gemini_tool_calls_round_trip_with_the_thought_signature(gateway):
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    c = client(gateway)
    first = c.chat.completions.create(
        model="gemini-3-pro-preview", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather" and "city" in call.function.arguments
    assert call.model_extra["extra_content"]["google"]["thought_signature"]
    # The SDK keeps the extra field when the message is sent back: Gemini 3 gets its signature.
    second = c.chat.completions.create(
        model="gemini-3-pro-preview",
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    assert second.usage.completion_tokens_details.reasoning_tokens > 0


def test_gemini_responses_streaming_and_not(gateway):
    c = client(gateway)
    first = c.responses.create(model="gemini", input="Hello", instructions="Be brief.")
    assert first.status == "completed"
    assert first.model == "gemini-2.5-flash"
    assert first.output_text
    follow = c.responses.create(model="gemini", input="And then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    assert c.responses.retrieve(first.id).output_text == first.output_text
    events = list(c.responses.create(model="gemini", input="Stream", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == first.output_text
    assert events[-1].response.usage.output_tokens > 0


def test_gemini_errors_reach_the_sdk_as_its_exception_types(gateway):
    with pytest.raises(openai.RateLimitError) as err:
        client(gateway, max_retries=0).chat.completions.create(
            model="gemini", messages=[{"role": "user", "content": "[emulator:status=429,retry_after=0] hi"}]
        )
    assert err.value.code == "rate_limit_exceeded"
    stream = client(gateway).chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "[emulator:drop=2] hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


# Claude on Amazon Bedrock behind the gateway (route `claude` of acme's `assistant`, Converse
# translated from and to the OpenAI API; the emulator verifies the gateway's SigV4).

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def test_bedrock_chat_streaming_and_not(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "claude"
    assert raw.headers["x-switchyard-provider"] == "bedrock"
    completion = raw.parse()
    assert completion.model == CLAUDE
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    chunks = list(client(gateway).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Stream a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_bedrock_tool_calls_round_trip_streaming_and_not(gateway):
    c = client(gateway)
    first = c.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=WEATHER,
        tool_choice="required",
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.id.startswith("tooluse_") and call.function.name == "get_weather"
    assert "city" in call.function.arguments
    second = c.chat.completions.create(
        model="claude",
        tools=WEATHER,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    chunks = list(c.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
    ))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("tooluse_") and deltas[0].function.name == "get_weather"
    assert "city" in "".join(d.function.arguments or "" for d in deltas)


def test_bedrock_responses_with_previous_response_id_and_stream(gateway):
    c = client(gateway)
    first = c.responses.create(model="claude", input="Hello", instructions="Be brief.")
    assert first.status == "completed"
    assert first.model == CLAUDE
    assert first.output_text
    follow = c.responses.create(model="claude", input="And then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    assert follow.output_text
    events = list(c.responses.create(model="claude", input="Stream please", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens > 0


def test_bedrock_errors_reach_the_sdk_as_its_exception_types(gateway):
    with pytest.raises(openai.RateLimitError) as err:
        client(gateway, max_retries=0).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "[emulator:status=429] hi"}]
        )
    assert err.value.code == "ThrottlingException"
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway, max_retries=0).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )
    assert err.value.code == "ValidationException"
    stream = client(gateway).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "[emulator:midstream_error=2] hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "modelStreamErrorException" in str(err.value)
