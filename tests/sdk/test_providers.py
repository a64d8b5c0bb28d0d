"""Every provider × front endpoint × stream mode through the official OpenAI Python SDK.

The example tenant's `assistant` proxy routes one model to each provider (on the bundled
emulator under `--emulator`); the SDK must parse every answer, stream or not, and a Responses
conversation must continue with `previous_response_id` and be retrievable by id."""
import pytest
from openai import OpenAI

ACME = "sk-acme-demo"

# (model the client names, route that must answer, provider name)
PROVIDERS = [
    ("gpt-4o-mini", "mini", "openai"),
    ("gpt-4.1", "azure", "azure"),
    ("gemini-2.5-flash", "gemini", "gemini"),
    ("claude", "claude", "bedrock"),
]

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def client(gateway):
    return OpenAI(base_url=f"{gateway}/acme/assistant/v1", api_key=ACME, max_retries=0)


@pytest.mark.parametrize("model,route,provider", PROVIDERS)
def test_chat_not_streaming(gateway, model, route, provider):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == route
    assert raw.headers["x-switchyard-provider"] == provider
    c = raw.parse()
    assert c.object == "chat.completion"
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "Hello from the Switchyard emulator. This is filler text for load tests."
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens == 12
    assert c.usage.total_tokens == c.usage.prompt_tokens + 12


@pytest.mark.parametrize("model,route,provider", PROVIDERS)
def test_chat_streaming_with_usage(gateway, model, route, provider):
    chunks = list(client(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Stream a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the Switchyard emulator. This is filler text for load tests."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("model,route,provider", PROVIDERS)
def test_chat_tool_round_trip_streaming_and_not(gateway, model, route, provider):
    c = client(gateway)
    first = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"example"}'
    followup = [
        {"role": "user", "content": "Weather in Paris?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = c.chat.completions.create(model=model, tools=TOOLS, messages=followup)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content.startswith("Hello from")
    # The same first turn, streamed: one call assembled from its deltas.
    chunks = list(c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, stream=True
    ))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city":"example"}'


@pytest.mark.parametrize("model,route,provider", PROVIDERS)
def test_responses_not_streaming_continued_and_retrieved(gateway, model, route, provider):
    c = client(gateway)
    first = c.responses.create(model=model, input="Hello", instructions="Be brief.")
    assert first.status == "completed"
    assert first.output_text == "Hello from the Switchyard emulator. This is filler text for load tests."
    assert first.usage.output_tokens == 12
    follow = c.responses.create(model=model, input="And then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens > first.usage.input_tokens, "the earlier turn was replayed"
    got = c.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text


@pytest.mark.parametrize("model,route,provider", PROVIDERS)
def test_responses_streaming(gateway, model, route, provider):
    events = list(client(gateway).responses.create(model=model, input="Stream please", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == 12
