"""Rules as data: the catalogue, the registry of detectors that raise its rules, the settings."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.config import RULES_FILE, parse_config
from monitor.detectors import behaviour, gpu, stratum, streams, tag_conflict, tunnel
from monitor.detectors.rules import (
    DETECTORS,
    RuleError,
    load_rules,
    read_catalogue,
    registry,
)
from monitor.detectors.signals import Signal
from monitor.docgen import update_detections

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SHIPPED = RULES_FILE.read_text()
RULE_ID = re.compile(r"RLG-[A-Z]+-\d{3}")


def catalogue(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def without(rule_id: str) -> str:
    """The shipped catalogue less one [[rule]] table."""
    head, *blocks = SHIPPED.split("\n[[rule]]\n")
    kept = [b for b in blocks if f'id = "{rule_id}"' not in b]
    assert len(kept) == len(blocks) - 1
    return "\n[[rule]]\n".join([head, *kept])


EXTRA = """
[[rule]]
id = "RLG-FOO-001"
name = "A rule nothing raises"
description = "x"
category = "tunnel"
techniques = [["T1572", "Protocol Tunneling"]]
severity = { low = "low", medium = "medium", high = "high" }
confidences = ["high"]
data_sources = ["exec argv"]
raised_on = "`exec`"
"""


def test_every_shipped_rule_has_exactly_one_detector() -> None:
    rules = load_rules()
    assert list(rules) == list(read_catalogue())
    assert set(rules) == set(registry(DETECTORS))
    assert {r.detector for r in rules.values()} == {m for m, _ in DETECTORS}
    assert rules[tunnel.RULE_SSH_FORWARD].detector == "monitor.detectors.tunnel"
    assert rules[stratum.RULE_STRATUM].detector == "monitor.detectors.stratum"
    assert rules[gpu.RULE_HELD_AFTER_END].detector == "monitor.detectors.gpu"
    assert rules[tag_conflict.RULE_TAG_CONFLICT].detector == "monitor.detectors.tag_conflict"


def test_a_rule_that_no_detector_raises_stops_the_load(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as info:
        load_rules(catalogue(tmp_path, SHIPPED + EXTRA))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'rules.toml'}: no detector raises RLG-FOO-001")
    assert "RULES" in msg  # says where the id would go


def test_a_detector_raising_an_undefined_rule_stops_the_load(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as info:
        load_rules(catalogue(tmp_path, without(gpu.RULE_HELD_AFTER_END)))
    assert "raised by a detector but not defined here: RLG-GPU-003 (monitor.detectors.gpu)" in str(
        info.value
    )


def test_both_problems_are_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="no detector raises RLG-FOO-001.*RLG-TUN-005"):
        load_rules(catalogue(tmp_path, without(tunnel.RULE_TUNNEL_DNS) + EXTRA))


def test_an_id_declared_by_two_detectors_is_an_error() -> None:
    assert registry((("a", ("X-1",)), ("b", ("X-2",)))) == {"X-1": "a", "X-2": "b"}
    with pytest.raises(RuleError, match="X-1 is declared by both a and b"):
        registry((("a", ("X-1",)), ("b", ("X-1",))))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('id = "RLG-TUN-002"', 'id = "RLG-TUN-001"'), "defined twice"),
        (
            lambda t: t.replace(
                'severity = { low = "high", medium = "critical", high = "critical" }',
                'severity = { low = "high", medium = "urgent", high = "critical" }',
            ),
            r"rule 1 \(RLG-TUN-001\): severity must map each of low, medium, high",
        ),
        (
            lambda t: t.replace('confidences = ["high"]', 'confidences = ["sure"]', 1),
            r"rule 1 \(RLG-TUN-001\): confidences must list some of low, medium, high",
        ),
        (
            lambda t: t.replace('raised_on = "`connect`"\n', "", 1),
            r"rule 1 \(RLG-TUN-001\): raised_on must be a string, got nothing",
        ),
        (lambda t: t.replace("[[rule]]", "[[rules]]"), "no \\[\\[rule\\]\\] tables"),
        (lambda t: t + "\n[[rule\n", "invalid TOML"),
    ],
)
def test_a_malformed_catalogue_is_a_clear_error(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        load_rules(catalogue(tmp_path, edit(SHIPPED)))


def test_an_unreadable_catalogue_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read the rule catalogue"):
        load_rules(tmp_path / "missing.toml")


def test_settings_disable_fix_severity_and_set_the_floor() -> None:
    cfg = parse_config(
        '[rules]\nmin_severity = "high"\n'
        '[rules."RLG-TUN-002"]\nenabled = false\n'
        '[rules."RLG-MIN-003"]\nseverity = "critical"\n'
    )
    rules = load_rules(settings=cfg.rules)
    assert rules.min_severity == "high"
    assert not rules[tunnel.RULE_SSH_PROTOCOL].enabled
    pool_dns = rules[stratum.RULE_POOL_DNS]
    assert pool_dns.enabled and pool_dns.severities() == ("critical",)
    assert pool_dns.severity([Signal("dns", "dns.pool_domain", "x", "low")]) == "critical"
    assert pool_dns.severity_set_by == '[rules."RLG-MIN-003"] severity'
    # untouched rules keep the catalogue's severity by confidence
    assert rules[stratum.RULE_STRATUM] == load_rules()[stratum.RULE_STRATUM]
    assert rules.raises("high") and rules.raises("critical") and not rules.raises("medium")
    assert load_rules().raises("low")


def test_settings_naming_a_rule_the_catalogue_lacks_are_an_error(tmp_path: Path) -> None:
    cfg = parse_config('[rules."RLG-TUN-005"]\nenabled = false\n')  # checked: a shipped id
    other = catalogue(tmp_path, without(tunnel.RULE_TUNNEL_DNS))
    fewer = tuple((m, tuple(r for r in ids if r != tunnel.RULE_TUNNEL_DNS)) for m, ids in DETECTORS)
    assert len(load_rules(other, detectors=fewer)) == len(load_rules()) - 1
    with pytest.raises(RuleError, match=r'\[rules."RLG-TUN-005"\]: .* has no rule RLG-TUN-005'):
        load_rules(other, settings=cfg.rules, detectors=fewer)


def test_possible_severities_follow_the_severity_map() -> None:
    rules = load_rules()
    assert rules[tunnel.RULE_SSH_CONNECT_BACK].severities() == ("critical",)
    assert rules[tunnel.RULE_REVERSE_SHELL].severities() == ("high", "critical")
    assert rules[gpu.RULE_HOLDER_ALERT].severities() == ("medium", "high", "critical")


def _literal_rule_ids(path: Path) -> list[tuple[int, str]]:
    """Rule-id string literals in a module, except the RULE_* constants that declare them."""
    tree = ast.parse(path.read_text())
    declared = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign | ast.Assign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id.startswith("RULE_")
    }
    examples = {
        id(kw.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "example"
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and RULE_ID.fullmatch(node.value)
        and id(node) not in declared | examples
    ]


def test_no_rule_id_literals_outside_the_detectors_declarations() -> None:
    found = {
        str(p.relative_to(REPO)): hits
        for p in sorted((REPO / "monitor").rglob("*.py"))
        if (hits := _literal_rule_ids(p))
    }
    assert found == {}, "name rules through their detector's RULE_* constants"


def test_declarations_are_the_registry() -> None:
    for module in (tunnel, stratum, gpu, tag_conflict, streams, behaviour):
        constants = {v for k, v in vars(module).items() if k.startswith("RULE_")}
        assert constants == set(module.RULES), module.__name__


def test_the_config_example_names_a_real_rule() -> None:
    from monitor.config import SCHEMA

    examples = [s.entries.example for s in SCHEMA if s.entries is not None]
    assert examples and set(examples) <= set(load_rules())


def test_the_rule_tables_in_detections_md_are_current() -> None:
    doc = REPO / "docs" / "detections.md"
    text = doc.read_text()
    assert update_detections(text) == text, (
        "regenerate: python -m monitor.docgen detections docs/detections.md"
    )
    for rule_id in load_rules():
        assert f"| {rule_id} |" in text


def test_update_detections_needs_its_markers() -> None:
    with pytest.raises(ValueError, match="expected one"):
        update_detections("# no markers here\n")


# --- `rlguard rules` and start-up ---------------------------------------------------------------


def test_rules_command_shows_the_effective_state(tmp_path: Path) -> None:
    from monitor.cli import app

    conf = tmp_path / "rlguard.toml"
    conf.write_text(
        '[rules]\nmin_severity = "medium"\n'
        '[rules."RLG-TUN-002"]\nenabled = false\n'
        '[rules."RLG-MIN-004"]\nseverity = "high"\n'
    )
    runner = CliRunner()
    res = runner.invoke(app, ["rules", "--json", "-c", str(conf)])
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert list(rows) == list(load_rules())
    assert rows["RLG-TUN-002"]["enabled"] is False and rows["RLG-TUN-002"]["raised"] == []
    pool_port = rows["RLG-MIN-004"]
    assert pool_port["severity"] == {"low": "high", "medium": "high", "high": "high"}
    assert pool_port["severity_set_by"] == '[rules."RLG-MIN-004"] severity'
    assert pool_port["severities"] == ["high"] and pool_port["raised"] == ["high"]
    # RLG-TUN-004 can be low, medium or high: low is now below the floor
    assert rows["RLG-TUN-004"]["raised"] == ["medium", "high"]
    assert rows["RLG-TUN-004"]["min_severity"] == "medium"
    assert rows["RLG-TUN-004"]["detector"] == "monitor.detectors.tunnel"
    res = runner.invoke(app, ["rules", "-c", str(conf)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert 'state: disabled ([rules."RLG-TUN-002"] enabled = false)' in out
    assert 'severity high for every alert ([rules."RLG-MIN-004"] severity)' in out
    assert "state: enabled; alerts below min_severity medium are not raised" in out
    n = len(load_rules())  # one disabled above
    assert f"{n} rules, {n - 1} enabled; min_severity medium" in out


def test_a_catalogue_the_detectors_disagree_with_stops_the_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from monitor.cli import app
    from monitor.detectors import rules as rules_mod

    fewer = tuple(
        (m, tuple(r for r in ids if r != gpu.RULE_HELD_AFTER_END)) for m, ids in DETECTORS
    )
    monkeypatch.setattr(rules_mod, "DETECTORS", fewer)
    runner = CliRunner()
    res = runner.invoke(app, ["rules", "-c", "/dev/null"])
    assert res.exit_code == 2
    assert "rlguard: rules error:" in res.output and "no detector raises RLG-GPU-003" in res.output
    res = runner.invoke(app, ["run", "-c", "/dev/null", "--duration", "0"])
    assert res.exit_code == 2 and "no detector raises RLG-GPU-003" in res.output
    res = runner.invoke(app, ["check", "-c", "/dev/null", "--no-load"])
    assert "[FAIL] rules:" in res.output and "no detector raises RLG-GPU-003" in res.output
    assert res.exit_code == 1
