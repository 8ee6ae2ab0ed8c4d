"""OpenAI-compatible chat completions with SSE streaming: OpenAI, vLLM, Ollama /v1, llama.cpp, FastGPT.

``POST {base_url}/chat/completions`` with ``stream: true``; the answer is a
``text/event-stream`` of ``data: {chat.completion.chunk}`` lines whose
``choices[0].delta.content`` are the text chunks, closed by ``data: [DONE]``.
An ``{"error": ...}`` payload (in the stream or as the HTTP body) is a failure;
a stream that ends with neither ``[DONE]`` nor a ``finish_reason`` was cut.

The gateway keeps the conversation and resends it each time, trimmed to
``history_tokens`` (entity-carrying turns first, then the most recent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from .base import BackendError, BotContext, BotResult
from .history import compile_entities, estimate_tokens, trim_history
from .http import HttpBackend, read_body
from .sse import check_status, iter_sse

DEFAULT_SYSTEM = (
    "You are the customer-service assistant of an online shop. Answer briefly and politely, "
    "in the language of the customer. If you cannot help, say that a human colleague will take over."
)

FAQ_INTRO = ("Answer from these entries of the shop's FAQ when one of them answers the question; "
             "otherwise say that a colleague will help.")
MIN_CONTEXT_CONFIDENCE = 0.05  # an entry less likely than this to answer the question (faq.Fusion) is left out


def faq_context(index: Any, question: str, k: int) -> str:
    """The `k` FAQ entries closest to `question` (faq.FaqIndex.explain), as prompt text in the
    question's language: "FAQ:" then one "Q: ... A: ..." pair per entry."""
    from .base import is_cjk

    zh = is_cjk(question)
    lines = [FAQ_INTRO]
    for cand in index.explain(question)[:k]:
        if cand.confidence < MIN_CONTEXT_CONFIDENCE:
            continue
        entry = index.entries[cand.entry]
        asked = entry.questions.get("zh" if zh else "en") or next(iter(entry.questions.values()), [""])
        lines.append(f"Q: {asked[0]}\nA: {entry.answer_for(zh)}")
    return "\n\n".join(lines) if len(lines) > 1 else "The shop's FAQ has nothing on this question."


ROLE_MAP = {"visitor": "user", "bot": "assistant", "agent": "assistant"}


class OpenAIBackend(HttpBackend):
    """Options: base_url (…/v1), model, api_key, system_prompt, temperature, max_tokens,
    history_tokens (default 2000), entity_patterns, flavor ("openai" | "vllm" | "ollama" |
    "fastgpt" | "llamacpp"), extra_body (merged into the request), include_meta (bool),
    faq_context (true: the demo FAQ, or a FAQ file's path: its entries closest to the question go
    into the system prompt), faq_context_entries (default 3). A template ([bots.templates], per
    tenant and group) replaces system_prompt, temperature and max_tokens."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.model = str(options.get("model", ""))
        self.flavor = str(options.get("flavor", "openai")).lower()
        self.system_prompt = str(options.get("system_prompt", DEFAULT_SYSTEM))
        self.history_tokens = int(options.get("history_tokens", 2000))
        self.entity_re = compile_entities(options.get("entity_patterns"))
        self.include_meta = bool(options.get("include_meta", False))
        self.extra_body: dict[str, Any] = dict(options.get("extra_body", {}))
        for key in ("temperature", "max_tokens", "top_p", "seed", "stop"):
            if key in options:
                self.extra_body.setdefault(key, options[key])
        if self.flavor == "fastgpt":
            self.extra_body.setdefault("detail", False)
        # Retrieval-augmented answers: the FAQ entries closest to the question go into the system
        # prompt (true: the bundled demo FAQ; a string: a FAQ file's path).
        self.faq: Any = None
        ctx_opt = options.get("faq_context")
        if ctx_opt:
            from .faq import shared_index

            self.faq = shared_index(None if ctx_opt is True else str(ctx_opt))
        self.faq_entries = int(options.get("faq_context_entries", 3))

    def build_messages(self, ctx: BotContext) -> list[dict[str, str]]:
        """System prompt (the template's when there is one, with the FAQ entries retrieved for the
        question when `faq_context` is set), trimmed history, then the question."""
        template = ctx.template
        system = template.system_prompt if template is not None and template.system_prompt is not None \
            else self.system_prompt
        if self.faq is not None:
            context = faq_context(self.faq, ctx.question, self.faq_entries)
            system = system.replace("{faq}", context) if "{faq}" in system else f"{system}\n\n{context}"
        if self.include_meta and ctx.meta:
            facts = ", ".join(f"{k}={v}" for k, v in sorted(ctx.meta.items()))
            system = f"{system}\nVisitor information: {facts}"
        budget = self.history_tokens - estimate_tokens(system) - estimate_tokens(ctx.question)
        messages = [{"role": "system", "content": system}] if system else []
        for turn in trim_history(ctx.history, budget, self.entity_re):
            messages.append({"role": ROLE_MAP.get(turn.role, "user"), "content": turn.text})
        messages.append({"role": "user", "content": ctx.question})
        return messages

    def build_body(self, ctx: BotContext) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": self.build_messages(ctx), "stream": True}
        if self.model:
            body["model"] = self.model
        if self.flavor in ("openai", "vllm"):
            body.setdefault("user", f"{ctx.tenant}:{ctx.visitor}")
        body.update(self.extra_body)
        template = ctx.template
        if template is not None:
            if template.temperature is not None:
                body["temperature"] = template.temperature
            if template.max_tokens is not None:
                body["max_tokens"] = template.max_tokens
        return body

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        url = f"{self.base_url}/chat/completions"
        done = False
        finish: str | None = None
        async with self.client.stream("POST", url, json=self.build_body(ctx), headers={"Accept": "text/event-stream"}) as resp:
            await check_status(resp, "openai")
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype:
                # Some servers ignore stream=true and answer one JSON completion.
                data = _loads(await read_body(resp))
                _raise_error(data)
                text = _first_choice(data).get("message", {}).get("content") or ""
                yield BotResult(text)
                return
            async with aclosing(iter_sse(resp)) as events:
                async for ev in events:
                    payload = ev.data.strip()
                    if not payload:
                        continue
                    if payload == "[DONE]":
                        done = True
                        break
                    data = _loads(payload)
                    _raise_error(data)
                    choice = _first_choice(data)
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
                    finish = choice.get("finish_reason") or finish
        if not done and not finish:
            raise BackendError("openai: stream ended before [DONE]")

    async def cancel(self, ctx: BotContext) -> None:
        """The API has no cancel call: closing the stream (the bridge does) stops generation."""


def _loads(raw: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except ValueError as exc:
        raise BackendError(f"openai: bad JSON in stream: {raw[:200]!r}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"openai: expected a JSON object, got {raw[:200]!r}")
    return data


def _raise_error(data: dict[str, Any]) -> None:
    err = data.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise BackendError(f"openai: error: {msg}")


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}
