"""Prompt templates: packaged distillation prompts and the rendering rules user templates rely on."""

from __future__ import annotations

import pytest

from medrecipe.prompts import (
    TemplateError,
    available_templates,
    image_refs,
    load_template,
    render_messages,
)
from medrecipe.schema import Item

IMG1 = "a" * 64
IMG2 = "b" * 64 + "@28x56"


def mc_item(images: list[str] | None = None) -> Item:
    return Item(id="q1", source="s", task="mm_reasoning" if images else "text",
                question="  Which organ produces insulin?  ", options=["Liver", "Pancreas", "Spleen"],
                answer="B", images=images or [])


def user_text(messages) -> str:
    user = next(m for m in messages if m["role"] == "user")
    return "\n".join(p["text"] for p in user["content"] if p["type"] == "text")


def test_packaged_distillation_templates_exist():
    assert {"long_reasoning", "reasoning_minimal", "direct"} <= set(available_templates())


def test_long_reasoning_asks_for_think_reflection_and_answer_tags_with_an_example():
    msgs = render_messages(mc_item(), "long_reasoning")
    assert msgs[0]["role"] == "system"
    text = user_text(msgs)
    assert "<think>" in text and "</think>" in text and "<answer>" in text
    assert "reflect" in text.lower()
    assert "only the letter" in text
    # One short worked example, in the same format the teacher must follow.
    assert text.count("<answer>B</answer>") == 1 and "Vitamin C" in text
    assert text.rstrip().endswith("A. Liver\nB. Pancreas\nC. Spleen")
    assert "Question: Which organ produces insulin?" in text  # question stripped of spaces


def test_reasoning_minimal_is_question_then_answer_instruction():
    msgs = render_messages(mc_item(), "reasoning_minimal")
    assert [m["role"] for m in msgs] == ["user"]
    text = user_text(msgs)
    assert text.startswith("Which organ produces insulin?\n\nA. Liver\nB. Pancreas\nC. Spleen")
    assert text.endswith("final answer inside <answer> </answer>.")
    assert "<think>" not in text


def test_direct_asks_for_the_answer_only():
    text = user_text(render_messages(mc_item(), "direct"))
    assert "letter of the correct option only" in text and "<think>" not in text


def test_open_questions_have_no_option_block():
    item = Item(id="o", source="s", task="open_vqa", question="Which organ is shown?",
                answer="liver")
    for name in ("long_reasoning", "reasoning_minimal", "direct"):
        text = user_text(render_messages(item, name))
        real = text.split("Now the real question.")[-1]  # skip the worked example
        assert "Which organ is shown?" in real and "A." not in real


def test_images_go_first_in_the_user_message_as_ref_parts():
    msgs = render_messages(mc_item([IMG1, IMG2]), "reasoning_minimal")
    parts = msgs[0]["content"]
    assert parts[:2] == [{"type": "image", "image": IMG1}, {"type": "image", "image": IMG2}]
    assert parts[2]["type"] == "text"
    assert image_refs(msgs) == [IMG1, IMG2]
    assert "Study the images" in user_text(render_messages(mc_item([IMG1, IMG2]),
                                                           "long_reasoning"))


def test_user_template_places_images_and_roles(tmp_path):
    p = tmp_path / "custom.j2"
    p.write_text("@@system\nYou are terse.\n@@user\nLook: {{ image(1) }} then {{ image(0) }}\n"
                 "{{ question }} ({{ letters | join('/') }})\n@@assistant\nSure.\n")
    msgs = load_template(str(p)).render(mc_item([IMG1, IMG2]))
    assert msgs[0] == {"role": "system", "content": "You are terse."}
    assert msgs[1]["content"] == [
        {"type": "text", "text": "Look: "}, {"type": "image", "image": IMG2},
        {"type": "text", "text": " then "}, {"type": "image", "image": IMG1},
        {"type": "text", "text": "Which organ produces insulin? (A/B/C)"}]
    assert msgs[2] == {"role": "assistant", "content": "Sure."}


def test_marker_followed_by_text_on_the_same_line(tmp_path):
    p = tmp_path / "tight.j2"
    p.write_text("@@system\nRules.\n@@user\n{%- if is_multiple_choice %}\n{{ question }}\n{% endif %}")
    msgs = load_template(p).render(mc_item())
    assert msgs[1] == {"role": "user", "content": [
        {"type": "text", "text": "Which organ produces insulin?"}]}


def test_extra_variables_reach_the_template(tmp_path):
    p = tmp_path / "judge.j2"
    p.write_text("Reference {{ item.answer }}; candidate {{ response }}")
    assert user_text(load_template(p).render(mc_item(), response="C")) == "Reference B; candidate C"


def test_template_errors_say_what_to_fix(tmp_path):
    with pytest.raises(TemplateError, match="unknown prompt template 'nope'.*long_reasoning"):
        load_template("nope")
    with pytest.raises(TemplateError, match="not found"):
        load_template(str(tmp_path / "missing.j2"))
    bad = tmp_path / "bad.j2"
    bad.write_text("{{ question }\n")
    with pytest.raises(TemplateError, match="syntax error on line 1"):
        load_template(bad)
    undef = tmp_path / "undef.j2"
    undef.write_text("{{ rationale }}")
    with pytest.raises(TemplateError, match="unknown variable"):
        load_template(undef).render(mc_item())
    img = tmp_path / "img.j2"
    img.write_text("{{ image(2) }} {{ question }}")
    with pytest.raises(TemplateError, match="asks for image 2"):
        load_template(img).render(mc_item([IMG1]))


def test_template_hash_follows_the_source(tmp_path):
    p = tmp_path / "t.j2"
    p.write_text("{{ question }}")
    h1 = load_template(p).hash
    assert load_template(p).hash == h1
    p.write_text("{{ question }}!")
    import os

    os.utime(p, (1, 1))  # a different mtime, as after any edit
    assert load_template(p).hash != h1
    assert load_template("direct").hash == load_template("direct").hash
    assert load_template("direct").hash != load_template("long_reasoning").hash
