"""The rule catalogue, the detectors that raise its rules, and the user's rule settings.

Rules are data (monitor/data/rules.toml): id, name, description, severity by confidence,
ATT&CK mapping, what raises them.  Behaviour is code: every detector module declares the
rule ids it raises in one place (its ``RULES``), and :data:`DETECTORS` lists those
modules.  :func:`load_rules` checks the file against that registry, so a rule that no
detector raises, or a detector raising an id the file does not define, stops start-up
with a clear error.  It then applies the config's ``[rules]`` settings (``enabled``, a
per-rule ``severity``, ``min_severity``), once: the engine only sees the effective rules.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.config import RULES_FILE, RulesConfig
from monitor.detectors import (
    behaviour,
    context,
    crossing,
    dnstunnel,
    gpu,
    intent,
    stratum,
    streams,
    tag_conflict,
    tunnel,
)
from monitor.detectors.signals import CONFIDENCE_RANK, Signal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# ECS event.severity numbers for the words (the scale Elastic's detection rules use)
SEVERITY_SCORE = {"low": 21, "medium": 47, "high": 73, "critical": 99}
SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
CONFIDENCES = ("low", "medium", "high")

# The registry: each detector module and the rule ids it raises.
DETECTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (tunnel.__name__, tunnel.RULES),
    (stratum.__name__, stratum.RULES),
    (gpu.__name__, gpu.RULES),
    (tag_conflict.__name__, tag_conflict.RULES),
    (crossing.__name__, crossing.RULES),
    (intent.__name__, intent.RULES),
    (dnstunnel.__name__, dnstunnel.RULES),
    (context.__name__, context.RULES),
    (streams.__name__, streams.RULES),
    (behaviour.__name__, behaviour.RULES),
)


class RuleError(ValueError):
    """The catalogue is malformed, or it and the detectors disagree; the message says how."""


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    description: str
    category: str
    techniques: tuple[tuple[str, str], ...]
    severity_for: dict[str, str]
    data_sources: tuple[str, ...]
    raised_on: str = ""  # the events that raise it (markdown, for docs/detections.md)
    confidences: tuple[str, ...] = CONFIDENCES  # the confidences its evidence can reach
    detector: str = ""  # the module that raises it (from the registry)
    enabled: bool = True
    severity_set_by: str = "rules.toml"  # or the config table that overrides it

    def severity(self, signals: list[Signal]) -> str:
        """Alert severity from the strongest signal; two medium signals count as high."""
        if not signals:
            return "low"
        best = max(CONFIDENCE_RANK[s.confidence] for s in signals)
        mediums = sum(1 for s in signals if s.confidence == "medium")
        if best == 2 and mediums >= 2:
            best = 3
        conf = {1: "low", 2: "medium", 3: "high"}[best]
        return self.severity_for[conf]

    def severities(self) -> tuple[str, ...]:
        """The severities its alerts can have, lowest first."""
        return tuple(
            sorted({self.severity_for[c] for c in self.confidences}, key=SEVERITY_RANK.__getitem__)
        )


class RuleSet(Mapping[str, Rule]):
    """The effective rules by id, in catalogue order, and the severity floor."""

    def __init__(self, rules: Mapping[str, Rule], min_severity: str = "low") -> None:
        self._rules = dict(rules)
        self.min_severity = min_severity

    def __getitem__(self, rule_id: str) -> Rule:
        return self._rules[rule_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def raises(self, severity: str) -> bool:
        """Is an alert of this severity raised ([rules] min_severity)?"""
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]


def registry(detectors: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, str]:
    """Rule id -> the detector module that raises it; an id raised twice is an error."""
    out: dict[str, str] = {}
    for module, ids in detectors:
        for rule_id in ids:
            if rule_id in out:
                raise RuleError(f"{rule_id} is declared by both {out[rule_id]} and {module}")
            out[rule_id] = module
    return out


def _field(entry: Mapping[str, Any], key: str, where: str, kind: type, what: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind):
        got = "nothing" if value is None else repr(value)[:60]
        raise RuleError(f"{where}: {key} must be {what}, got {got}")
    return value


def _strings(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = _field(entry, key, where, list, "an array of strings")
    if not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where}: {key} must be an array of strings")
    return tuple(value)


def _rule(entry: Any, where: str) -> Rule:
    """One [[rule]] table, validated (its position and id in ``where``)."""
    if not isinstance(entry, dict):
        raise RuleError(f"{where}: must be a table ([[rule]])")
    rule_id = _field(entry, "id", where, str, "a string")
    where = f"{where} ({rule_id})"
    sev = _field(entry, "severity", where, dict, "a table {low, medium, high} -> severity")
    if set(sev) != set(CONFIDENCES) or not all(v in SEVERITY_RANK for v in sev.values()):
        raise RuleError(
            f"{where}: severity must map each of low, medium, high to one of "
            f"{', '.join(SEVERITY_RANK)}, got {sev!r}"[:300]
        )
    confidences = _strings(entry, "confidences", where)
    if not confidences or not set(confidences) <= set(CONFIDENCES):
        raise RuleError(f"{where}: confidences must list some of low, medium, high")
    techniques = _field(entry, "techniques", where, list, "an array of [id, name] pairs")
    if not all(isinstance(t, list) and len(t) == 2 for t in techniques):
        raise RuleError(f"{where}: techniques must be [id, name] pairs")
    return Rule(
        id=rule_id,
        name=_field(entry, "name", where, str, "a string"),
        description=_field(entry, "description", where, str, "a string"),
        category=_field(entry, "category", where, str, "a string"),
        techniques=tuple((str(t[0]), str(t[1])) for t in techniques),
        severity_for=dict(sev),
        data_sources=_strings(entry, "data_sources", where),
        raised_on=_field(entry, "raised_on", where, str, "a string"),
        confidences=tuple(sorted(set(confidences), key=CONFIDENCE_RANK.__getitem__)),
    )


def read_catalogue(path: Path = RULES_FILE) -> dict[str, Rule]:
    """The rules in the file as written, by id, in file order (no registry check)."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise RuleError(f"{path}: cannot read the rule catalogue: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path}: invalid TOML: {exc}") from None
    entries = doc.get("rule")
    if not isinstance(entries, list) or not entries:
        raise RuleError(f"{path}: no [[rule]] tables")
    rules: dict[str, Rule] = {}
    for i, entry in enumerate(entries, start=1):
        rule = _rule(entry, f"{path}: rule {i}")
        if rule.id in rules:
            raise RuleError(f"{path}: rule {i}: {rule.id} is defined twice")
        rules[rule.id] = rule
    return rules


def load_rules(
    path: Path | None = None,
    settings: RulesConfig | None = None,
    detectors: tuple[tuple[str, tuple[str, ...]], ...] | None = None,
) -> RuleSet:
    """The effective rules: the catalogue (default: the shipped one), checked against the
    registry (default: :data:`DETECTORS`), with the settings applied."""
    path = path if path is not None else RULES_FILE
    rules = read_catalogue(path)
    raisers = registry(detectors if detectors is not None else DETECTORS)
    orphans = [rule_id for rule_id in rules if rule_id not in raisers]
    undefined = [f"{rule_id} ({mod})" for rule_id, mod in raisers.items() if rule_id not in rules]
    problems = []
    if orphans:
        problems.append(
            f"no detector raises {', '.join(orphans)} (add the id to its detector's RULES, "
            "or remove the rule)"
        )
    if undefined:
        problems.append(f"raised by a detector but not defined here: {', '.join(undefined)}")
    if problems:
        raise RuleError(f"{path}: " + "; ".join(problems))
    rules = {k: dataclasses.replace(r, detector=raisers[k]) for k, r in rules.items()}
    if settings is None:
        return RuleSet(rules)
    for rule_id, s in settings.overrides:
        rule = rules.get(rule_id)
        if rule is None:  # the config checks ids against the shipped catalogue
            raise RuleError(f'[rules."{rule_id}"]: {path} has no rule {rule_id}')
        changes: dict[str, Any] = {"enabled": s.enabled}
        if s.severity:
            changes["severity_for"] = dict.fromkeys(CONFIDENCES, s.severity)
            changes["severity_set_by"] = f'[rules."{rule_id}"] severity'
        rules[rule_id] = dataclasses.replace(rule, **changes)
    return RuleSet(rules, settings.min_severity)
