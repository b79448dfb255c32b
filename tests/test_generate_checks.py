"""Responses cut at max_tokens and questions whose n samples are identical are counted by the
generate stage, warned about past the recipe's thresholds, and shown in the report and
`medrecipe inspect` (run through `medrecipe run` against a scripted local server)."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from typer.testing import CliRunner

from medrecipe.cli import app
from medrecipe.config import GenerateConfig, GenerateWarnings, SamplingConfig, TeacherConfig
from medrecipe.generate import generate_stage
from medrecipe.generate.checks import OutputChecks, check_warnings
from medrecipe.schema import Generation, Item, to_table
from medrecipe.store import Run
from medrecipe.testing.chat_server import ChatServer

ECHO = "<think>The same reasoning every time, whatever the sampling settings say.</think>" \
       "<answer>A</answer>"


def responder(body, index):
    """`echo` questions: one text whatever the sample (a server ignoring sampling);
    `endless` questions: cut at the token limit; the rest: a different text per sample."""
    text = json.dumps(body["messages"])
    if "endless" in text:
        return {"content": f"<think>Sample {index} is still weighing the first option against "
                           "the second, and", "finish_reason": "length"}
    if "echo" in text:
        return ECHO
    return f"<think>Sample {index} weighs the options one by one.</think><answer>A</answer>"


def write_recipe(tmp_path, base_url, n_echo=4, n_endless=2, n_plain=4, **generate):
    rows = ([{"id": f"e{i}", "question": f"An echo question number {i}?"} for i in range(n_echo)]
            + [{"id": f"l{i}", "question": f"An endless question number {i}?"}
               for i in range(n_endless)]
            + [{"id": f"p{i}", "question": f"A plain question number {i}?"}
               for i in range(n_plain)])
    for r in rows:
        r.update(options=["right", "wrong"], answer="A")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = {
        "name": "checks", "run_dir": str(tmp_path / "run"), "shards": 2,
        "sources": [{"name": "q", "adapter": "generic", "path": "q.jsonl"}],
        "teachers": {"t": {"model": "m", "base_url": base_url, "template": "long_reasoning",
                           "sampling": {"max_tokens": 300}}},
        "generate": {"n": 4, "routes": {"*": "t"}, **generate},
        "select": {"cap_per_question": 2},
        "export": {"formats": ["jsonl"]},
    }
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_a_run_counts_warns_and_reports_length_cuts_and_identical_samples(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe = write_recipe(tmp_path, srv.base_url)
        out = CliRunner().invoke(app, ["run", str(recipe), "--no-progress"])
        assert out.exit_code == 0, out.output
        again = CliRunner().invoke(app, ["run", str(recipe), "--no-progress"])
    assert again.exit_code == 0, again.output

    run = Run(tmp_path / "run", create=False)
    rec = run.stage("generate")
    assert rec.extra["n_shards"] == 2
    checks = rec.extra["output_checks"]  # merged over both shards
    # 10 questions x 4 samples; the 2 endless questions' 8 samples were cut.
    assert {k: checks[k] for k in ("responses", "length_cut", "sampled_items",
                                   "identical_items")} == {
        "responses": 40, "length_cut": 8, "sampled_items": 10, "identical_items": 4}
    assert checks["by_teacher"]["t"]["identical_items"] == 4

    text = flat(out.output)
    assert ("warning: generate: teacher 't': 8 of 40 responses (20.0%) were cut at the token "
            "limit (finish_reason=length)") in text
    assert "Raise teachers.t.sampling.max_tokens (now 300)" in text
    assert "teacher 't': 4 of 10 questions (40.0%) got 4 identical samples" in text
    assert "The server ignores the sampling parameters or `n`" in text
    # The second run is up to date, and still says so (the generations have not changed).
    assert "generate: up to date" in flat(again.output)
    assert "8 of 40 responses (20.0%) were cut" in flat(again.output)
    log = (run.root / "logs" / "medrecipe.log").read_text()
    assert "warning: generate: teacher 't': 8 of 40 responses (20.0%) were cut" in log
    assert "4 of 10 questions (40.0%) got 4 identical samples" in log

    html = (run.root / "report" / "report.html").read_text()
    assert '<section id="warnings"' in html
    assert "8 of 40 responses (20.0%) were cut at the token limit" in html
    assert "<td>t</td><td class=\"num\">40</td><td class=\"num\">8 (20.0%)</td>" \
           "<td class=\"num\">10</td><td class=\"num\">4 (40.0%)</td>" in html

    shown = CliRunner().invoke(app, ["inspect", str(run.root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "response checks (generate)" in shown.output
    assert "8 (20.0%)" in shown.output and "4 (40.0%)" in shown.output
    assert "4 of 10 questions (40.0%) got 4 identical samples" in flat(shown.output)


def test_thresholds_come_from_the_recipe_and_do_not_rerun_generation(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe = write_recipe(tmp_path, srv.base_url)
        assert CliRunner().invoke(app, ["run", str(recipe), "--no-progress"]).exit_code == 0
        sent = srv.count
        # Raising the thresholds silences both warnings; generation stays up to date.
        out = CliRunner().invoke(app, ["run", str(recipe), "--no-progress",
                                       "-o", "generate.warn.length_cut=0.25",
                                       "-o", "generate.warn.identical_samples=null"])
        assert srv.count == sent
    assert out.exit_code == 0, out.output
    text = flat(out.output)
    assert "generate: up to date" in text
    assert "warning" not in text
    html = (tmp_path / "run" / "report" / "report.html").read_text()
    assert '<section id="warnings"' not in html
    assert "8 (20.0%)" in html  # the counts are still shown


def test_a_healthy_run_warns_about_nothing(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe = write_recipe(tmp_path, srv.base_url, n_echo=0, n_endless=0, n_plain=6)
        out = CliRunner().invoke(app, ["run", str(recipe), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "warning" not in out.output
    checks = Run(tmp_path / "run", create=False).stage("generate").extra["output_checks"]
    assert (checks["length_cut"], checks["identical_items"], checks["sampled_items"]) == (0, 0, 6)


def test_the_in_memory_stage_counts_and_warns_on_the_logger(tmp_path, caplog):
    items = [Item(id=f"q{i}", source="s", task="text", question=q, options=["a", "b"],
                  answer="A")
             for i, q in enumerate(["An echo question?", "An echo one too?",
                                    "An endless question?", "A plain question?"])]
    with ChatServer(responder=responder) as srv:
        t = TeacherConfig(model="m", base_url=srv.base_url, template="reasoning_minimal",
                          sampling=SamplingConfig(max_tokens=128, temperature=0.0))
        with caplog.at_level(logging.WARNING, logger="medrecipe"):
            res = generate_stage(to_table(items), {"t": t}, GenerateConfig(n=3),
                                 Run(tmp_path / "r"), None, progress=False)
    c = res.extra["output_checks"]
    assert (c["responses"], c["length_cut"], c["sampled_items"], c["identical_items"]) \
        == (12, 3, 4, 2)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("3 of 12 responses (25.0%) were cut" in m and "(now 128)" in m for m in msgs)
    # With temperature 0 the fix is the temperature, not the server.
    assert any("2 of 4 questions (50.0%) got 3 identical samples" in m
               and "With teachers.t.sampling.temperature at 0" in m for m in msgs)


def _gen(item, i, text, teacher="t", finish="stop", error=None):
    return Generation(key=f"{item}-{i}", item_id=item, teacher=teacher, model="m",
                      sample_index=i, text=text, finish_reason=finish, error=error)


def test_identical_means_every_answered_sample_and_short_answers_are_not_checked():
    long = "x" * 80
    c = OutputChecks(n=3)
    c.add([_gen("a", 0, long), _gen("b", 0, "B"), _gen("c", 0, long), _gen("d", 0, long)])
    c.add([_gen("a", 1, long), _gen("b", 1, "B"), _gen("c", 1, long + "y"),
           _gen("d", 1, None, error="timeout")])
    # sample 2 arrives later (another batch), d's is a failed request as well
    c.add([_gen("a", 2, long, finish="length"), _gen("b", 2, "B"), _gen("c", 2, long),
           _gen("d", 2, None, error="timeout")])
    got = c.counts()
    # a: identical; b: identical but one letter long (not checked); c: differs; d: one answer
    assert (got["responses"], got["length_cut"], got["sampled_items"],
            got["identical_items"]) == (10, 1, 2, 1)


def test_questions_left_open_by_a_stop_are_settled_at_the_end():
    c = OutputChecks(n=4)
    c.add([_gen("a", 0, "y" * 70), _gen("a", 1, "y" * 70)])  # the budget stopped samples 2, 3
    assert c.counts()["identical_items"] == 1


@pytest.mark.parametrize("cut,responses,warned", [(5, 100, False), (6, 100, True), (0, 0, False)])
def test_the_length_threshold_is_a_strict_share(cut, responses, warned):
    checks = {"by_teacher": {"t": {"responses": responses, "length_cut": cut,
                                   "sampled_items": 0, "identical_items": 0}}}
    assert bool(check_warnings(checks, GenerateWarnings(), 4)) is warned


def test_warning_thresholds_are_validated_in_the_recipe(tmp_path):
    from medrecipe.config import load_recipe
    from medrecipe.errors import UserError

    recipe = write_recipe(tmp_path, "http://127.0.0.1:9/v1", warn={"length_cut": 5})
    with pytest.raises(UserError, match="generate.warn.length_cut"):
        load_recipe(recipe)
