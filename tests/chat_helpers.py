"""Helpers for tests that script the local chat server: the text of a request's prompt."""

from __future__ import annotations


def prompt_text(body) -> str:
    """Every text part of a chat-completions request body's messages, joined by newlines."""
    parts = []
    for m in body["messages"]:
        c = m["content"]
        parts.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c
                                                           if p.get("type") == "text"))
    return "\n".join(parts)
