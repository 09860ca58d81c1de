"""Generate docs/configuration.md from the config schema (the one source of truth).

    python -m monitor.docgen > docs/configuration.md

A unit test fails when the committed file and the schema disagree.
"""

from __future__ import annotations

from monitor.config import SCHEMA, render_example


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
        out += [
            f"## `[{spec.name}]`",
            "",
            spec.doc,
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for f in spec.fields:
            default = repr(list(f.default) if isinstance(f.default, (list, tuple)) else f.default)
            rules = "; ".join(c.rule for c in f.checks)
            meaning = f.doc + (f" Must be {rules}." if rules else "")
            out.append(
                f"| `{f.name}` | {f.kind.value} | `{default}` | {meaning.replace('|', '/')} |"
            )
        out.append("")
    out += [
        "## The whole file at its defaults",
        "",
        "```toml",
        render_example().rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(configuration_reference(), end="")
