"""The demo's requests (demo.py): one prompt sent through the proxy with each official SDK
(openai chat and responses, anthropic, google-genai, ollama), streamed or not; what the client
got back, as text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anthropic
    import openai


def send_native(client: str, stream: bool, prompt: str, headers: dict[str, str],
                proxy_url: str) -> str:
    """Send one prompt with Gemini's or Ollama's SDK, native protocol; the text received."""
    import ollama
    from google import genai
    from google.genai import types

    if client == "gemini":
        options = types.HttpOptions(base_url=proxy_url, headers=headers, timeout=30_000,
                                    client_args={"trust_env": False},
                                    retry_options=types.HttpRetryOptions(attempts=1))
        with genai.Client(api_key="gemini-demo", http_options=options) as gemini:
            if stream:
                return "".join(chunk.text or "" for chunk in gemini.models.generate_content_stream(
                    model="gemini-2.5-flash", contents=prompt))
            return gemini.models.generate_content(model="gemini-2.5-flash",
                                                  contents=prompt).text or ""
    with ollama.Client(host=proxy_url, headers=headers, timeout=30, trust_env=False) as local:
        messages = [{"role": "user", "content": prompt}]
        if stream:
            return "".join(part.message.content or "" for part in local.chat(
                model="llama3.2", messages=messages, stream=True))
        return local.chat(model="llama3.2", messages=messages).message.content or ""


def send(
    client: str,
    stream: bool,
    prompt: str,
    headers: dict[str, str],
    oa: openai.OpenAI,
    an: anthropic.Anthropic,
) -> str:
    """Send one prompt with the openai or anthropic SDK; the text the client received."""
    import anthropic

    if client == "openai chat":
        if stream:
            parts: list[str] = []
            for chunk in oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                extra_headers=headers,
            ):
                parts.extend(c.delta.content for c in chunk.choices if c.delta.content)
            return "".join(parts)
        completion = oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            extra_headers=headers,
        )
        return completion.choices[0].message.content or ""
    if client == "openai responses":
        if stream:
            deltas: list[str] = []
            for event in oa.responses.create(
                model="gpt-4o-mini", input=prompt, stream=True, extra_headers=headers
            ):
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            return "".join(deltas)
        response = oa.responses.create(model="gpt-4o-mini", input=prompt, extra_headers=headers)
        return response.output_text
    if stream:
        with an.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=256,
            messages=[{"role": "user", "content": prompt}],
            extra_headers=headers,
        ) as events:
            return "".join(events.text_stream)
    message = an.messages.create(
        model="claude-haiku-4-5",
        max_tokens=256,
        messages=[{"role": "user", "content": prompt}],
        extra_headers=headers,
    )
    return "".join(b.text for b in message.content if isinstance(b, anthropic.types.TextBlock))
