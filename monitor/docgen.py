"""Generate the reference docs from the data they describe (one source of truth each).

    python -m monitor.docgen > docs/configuration.md        # from the config schema
    python -m monitor.docgen detections docs/detections.md  # its rule tables, from rules.toml

Unit tests fail when a committed file and its source disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from monitor.config import SCHEMA, FieldSpec, render_example
from monitor.detectors.rules import CONFIDENCES, RuleSet, load_rules


def _field_table(specs: tuple[FieldSpec, ...]) -> list[str]:
    out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in specs:
        default = repr(list(f.default) if isinstance(f.default, (list, tuple)) else f.default)
        rules = "; ".join(c.rule for c in f.checks)
        meaning = f.doc + (f" Must be {rules}." if rules else "")
        out.append(f"| `{f.name}` | {f.kind.value} | `{default}` | {meaning.replace('|', '/')} |")
    return out


def configuration_reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "rlguard reads one TOML file: `--config PATH`, else `/etc/rlguard/rlguard.toml` "
        "when it exists, else the built-in defaults. Unknown keys, wrong types and bad "
        "values are errors that name the file and the dotted key (exit code 2). "
        "This page is generated from the schema in `monitor/config.py` "
        "(`python -m monitor.docgen`).",
        "",
    ]
    for spec in SCHEMA:
        out += [f"## `[{spec.name}]`", "", spec.doc, "", *_field_table(spec.fields), ""]
        e = spec.entries
        if e is not None:
            example = f'`[{spec.name}."{e.example}"]`'
            out += [f'### `[{spec.name}."<{e.what}>"]`', ""]
            out += [f"{e.doc} For example {example}; each key is optional.", ""]
            out += [*_field_table(e.fields), ""]
    out += [
        "## The whole file at its defaults",
        "",
        "```toml",
        render_example().rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)


# -- docs/detections.md: the rule tables between markers ---------------------------------

MARK = "<!-- generated: {name} ({how}); edit monitor/data/rules.toml, not this -->"
END = "<!-- end generated: {name} -->"
HOW = "python -m monitor.docgen detections docs/detections.md"


def rule_table(rules: RuleSet) -> list[str]:
    """Every rule: name, what raises it, the severities it can have, its detector."""
    out = [
        "| rule | name | raised on | severities it can have | detector |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rules.values():
        module = r.detector.rsplit(".", 1)[-1]
        out.append(
            f"| {r.id} | {r.name} | {r.raised_on} | {', '.join(r.severities())} | `{module}.py` |"
        )
    return out


def severity_table(rules: RuleSet) -> list[str]:
    """Every rule's severity by the confidence of its evidence (rules.toml `severity`)."""
    out = [
        "| rule | " + " | ".join(f"{c} →" for c in CONFIDENCES) + " |",
        "| --- | " + " | ".join("---" for _ in CONFIDENCES) + " |",
    ]
    for r in rules.values():
        out.append(f"| {r.id} | " + " | ".join(r.severity_for[c] for c in CONFIDENCES) + " |")
    return out


def update_detections(text: str, rules: RuleSet | None = None) -> str:
    """``text`` (docs/detections.md) with its generated tables made current."""
    rules = rules if rules is not None else load_rules()
    for name, lines in (
        ("rule-table", rule_table(rules)),
        ("severity-table", severity_table(rules)),
    ):
        begin, end = MARK.format(name=name, how=HOW), END.format(name=name)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
        m = pattern.search(text)
        if m is None or pattern.search(text, m.end()) is not None:
            raise ValueError(f"expected one {begin!r} ... {end!r} block")
        text = text[: m.start()] + "\n".join([begin, *lines, end]) + text[m.end() :]
    return text


def main(argv: list[str]) -> int:
    if not argv:
        print(configuration_reference(), end="")
        return 0
    if argv[0] == "detections" and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(update_detections(path.read_text()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
