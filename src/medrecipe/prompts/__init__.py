"""Prompt templates (Jinja files) rendered from Items into OpenAI-style chat messages.

A template is a `.j2` file: packaged ones live next to this module and load by name
(`long_reasoning`, `reasoning_minimal`, `direct`, ...); a recipe may instead give a path to
its own file. The rendered text is split into messages at lines that start with
`@@system`, `@@user` or `@@assistant`; `{{ image(i) }}` / `{{ images() }}` place image parts.
(A marker must start a line; text after it on the same line joins the new message.)
When a template places no image and the item has images, they go first in the first user
message. Image parts carry ImageStore refs; backends turn them into bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from medrecipe.errors import UserError
from medrecipe.schema import Item, letter

__all__ = [
    "PromptTemplate",
    "TemplateError",
    "available_templates",
    "image_refs",
    "load_template",
    "render_messages",
    "template_context",
]

# A marker starts a line; anything after it on that line already belongs to the new message
# (Jinja whitespace control can pull the next line up).
ROLE_MARKER = re.compile(r"^@@(system|user|assistant)[ \t]*\n?", re.MULTILINE)
_IMAGE_MARK = "\x00IMG:{}\x00"
_IMAGE_SPLIT = re.compile("\x00IMG:(\\d+)\x00")


class TemplateError(UserError):
    """A prompt template is missing or does not render."""


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded template: its name, source text, content hash and compiled form."""

    name: str
    source: str
    hash: str
    origin: str = ""  # file the template came from
    _compiled: jinja2.Template | None = field(default=None, repr=False, compare=False)

    def render(self, item: Item, **extra: Any) -> list[dict[str, Any]]:
        """Chat messages for one item."""
        ctx = template_context(item)
        ctx.update(extra)
        return self.render_vars(ctx, list(item.images), owner=f"item {item.id!r}")

    def render_vars(self, variables: Mapping[str, Any], images: Iterable[str] = (),
                    owner: str = "this prompt") -> list[dict[str, Any]]:
        """Chat messages from explicit template variables and image refs (no Item needed)."""
        assert self._compiled is not None
        refs = list(images)
        n_images = len(refs)

        def image(i: int) -> str:
            if not 0 <= int(i) < n_images:
                raise TemplateError(
                    f"template {self.name!r} asks for image {i}, but {owner} has "
                    f"{n_images} image(s)")
            return _IMAGE_MARK.format(int(i))

        def images_() -> str:
            return "".join(_IMAGE_MARK.format(i) for i in range(n_images))

        ctx = {"n_images": n_images, **variables}
        try:
            text = self._compiled.render(image=image, images=images_, **ctx)
        except jinja2.UndefinedError as e:
            raise TemplateError(f"template {self.name!r} ({self.origin}) uses an unknown "
                                f"variable: {e.message}") from None
        return _to_messages(text, refs, self.name)


def template_context(item: Item) -> dict[str, Any]:
    """Variables every template sees for an item."""
    options = [{"letter": letter(i), "text": str(t)} for i, t in enumerate(item.options)]
    return {
        "item": item,
        "question": item.question.strip(),
        "options": options,
        "letters": [o["letter"] for o in options],
        "option_block": "\n".join(f"{o['letter']}. {o['text']}" for o in options),
        "is_multiple_choice": bool(options),
        "task": item.task,
        "modality": item.modality,
        "anatomy": item.anatomy,
        "meta": item.meta or {},
        "n_images": len(item.images),
    }


def _text_parts(text: str, refs: list[str], used: set[int]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    pieces = _IMAGE_SPLIT.split(text)
    for k, piece in enumerate(pieces):
        if k % 2 == 1:
            idx = int(piece)
            used.add(idx)
            parts.append({"type": "image", "image": refs[idx]})
        else:
            piece = piece.strip("\n")
            if piece.strip():
                parts.append({"type": "text", "text": piece})
    return parts


def _to_messages(text: str, refs: list[str], name: str) -> list[dict[str, Any]]:
    sections: list[tuple[str, str]] = []
    pos, role = 0, "user"
    for m in ROLE_MARKER.finditer(text):
        if text[pos:m.start()].strip():
            sections.append((role, text[pos:m.start()]))
        role, pos = m.group(1), m.end()
    if text[pos:].strip():
        sections.append((role, text[pos:]))
    if not sections:
        raise TemplateError(f"template {name!r} rendered no message text")
    used: set[int] = set()
    messages: list[dict[str, Any]] = []
    for role, body in sections:
        parts = _text_parts(body, refs, used)
        if not parts:
            continue
        if role == "user":
            messages.append({"role": role, "content": parts})
        else:  # system and assistant content stays a plain string (images only in user turns)
            messages.append({"role": role, "content": "\n".join(
                p["text"] for p in parts if p["type"] == "text")})
    if refs and not used:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        img_parts = [{"type": "image", "image": r} for r in refs]
        if first_user is None:
            messages.append({"role": "user", "content": img_parts})
        else:
            first_user["content"] = img_parts + first_user["content"]
    return messages


def _packaged_dir() -> Path:
    return Path(str(resources.files("medrecipe.prompts")))


def available_templates() -> list[str]:
    """Names of the packaged templates."""
    return sorted(p.stem for p in _packaged_dir().glob("*.j2"))


@lru_cache(maxsize=256)
def _load_cached(name: str, path: str, mtime: float) -> PromptTemplate:
    source = Path(path).read_text(encoding="utf-8")
    try:
        compiled = _env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template {name!r} ({path}) has a syntax error on line "
                            f"{e.lineno}: {e.message}") from None
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    return PromptTemplate(name=name, source=source, hash=digest, origin=path, _compiled=compiled)


def load_template(name_or_path: str | Path | PromptTemplate,
                  search_dirs: Iterable[str | Path] = ()) -> PromptTemplate:
    """A template by packaged name, by name in `search_dirs`, or by path to a .j2 file."""
    if isinstance(name_or_path, PromptTemplate):
        return name_or_path
    spec = str(name_or_path)
    candidates: list[Path] = []
    p = Path(spec).expanduser()
    if spec.endswith(".j2") or "/" in spec or p.is_file():
        candidates.append(p)
    else:
        for d in search_dirs:
            candidates.append(Path(d) / f"{spec}.j2")
        candidates.append(_packaged_dir() / f"{spec}.j2")
    for c in candidates:
        if c.is_file():
            name = c.stem
            return _load_cached(name, str(c.resolve()), c.stat().st_mtime)
    if spec.endswith(".j2") or "/" in spec:
        raise TemplateError(f"prompt template file not found: {spec}")
    raise TemplateError(
        f"unknown prompt template {spec!r}; use one of {', '.join(available_templates())} "
        "or a path to a .j2 file")


def render_messages(item: Item, template: str | Path | PromptTemplate,
                    **extra: Any) -> list[dict[str, Any]]:
    """Render `item` with a template (name, path or loaded) into chat messages."""
    return load_template(template).render(item, **extra)


def image_refs(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Image refs in the messages, in order of appearance."""
    refs: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            refs.extend(p["image"] for p in content if p.get("type") == "image")
    return refs
