"""Unit tests for monitor.config: defaults, every error class, tags, FNV-1a, example file."""

from __future__ import annotations

import dataclasses
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from monitor import config as cfg
from monitor.config import (
    ConfigError,
    config_from_dict,
    fnv1a_64,
    load_config,
    parse_config,
    render_example,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "rlguard.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_for(tmp_path: Path, text: str) -> ConfigError:
    """Load `text` from a file; return the ConfigError, asserting it names that file."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert str(err).startswith(f"{p}: "), str(err)
    assert err.path == p
    return err


def assert_names_key(err: ConfigError, key: str) -> None:
    assert err.key == key
    assert f": {key}: " in str(err), str(err)


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Minimal TOML writer for the tests (sections of scalars and string arrays)."""
    out: list[str] = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {cfg._toml_value(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


# --- defaults -----------------------------------------------------------------------------


def test_none_gives_defaults() -> None:
    c = load_config(None)
    assert c.source is None
    assert c.output.path == "-"
    assert c.output.metrics_interval_s == 10.0
    assert c.tags.episode == ("RL_EPISODE_ID", "EPISODE_ID", "TASK_ID")
    assert c.tags.worker == ("RL_WORKER_ID", "RL_WORKER", "WORKER_NAME", "RANK", "LOCAL_RANK")
    assert c.tags.run == ("RL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "RAY_JOB_ID")
    assert c.tags.trajectory == ("RL_TRAJECTORY_ID",)
    assert c.tags.sandbox == ("RL_SANDBOX_ID",)
    assert c.tags.extra == ("IFLOW_ENV",)
    assert "AWS_*" in c.tags.deny and "*TOKEN*" in c.tags.deny
    assert c.tags.denied == ()
    assert len(c.tags.keys) == 15
    assert c.probes == cfg.ProbesConfig(
        ring_pages=4096,
        first_bytes=256,
        max_args=32,
        arg_size=256,
        env_scan=256,
        poll_interval_ms=10,
    )
    assert c.process_table == cfg.ProcessTableConfig(
        exit_grace_s=5.0, max_lineage=16, max_entries=200000, max_exited=8192
    )


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = write(tmp_path, "# nothing here\n")
    c = load_config(str(p))  # str is accepted too
    assert c.source == p
    assert dataclasses.replace(c, source=None) == load_config(None)


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[probes]\nring_pages = 1024\n"))
    assert c.probes.ring_pages == 1024
    assert c.probes.max_args == 32
    assert c.output == load_config(None).output


def test_config_is_frozen() -> None:
    c = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.probes.ring_pages = 8  # type: ignore[misc]


def test_int_accepted_for_float(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[output]\nmetrics_interval_s = 2\n"))
    assert c.output.metrics_interval_s == 2.0
    assert isinstance(c.output.metrics_interval_s, float)


def test_as_dict_is_plain_and_round_trips(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[tags]\nextra = ['MY_VAR', 'API_KEY']\n"))
    d = c.as_dict()
    assert d["source"] == str(c.source)
    assert d["tags"]["denied"] == [["API_KEY", "*KEY*"]]
    assert d["tags"]["keys"] == list(c.tags.keys)
    assert isinstance(d["tags"]["episode"], list)
    # Without the derived entries the dict is a config that loads to the same values.
    data = {k: dict(v) for k, v in d.items() if k != "source"}
    del data["tags"]["keys"], data["tags"]["denied"]
    again = load_config(write(tmp_path, to_toml(data), "again.toml"))
    # The denied key was filtered out before as_dict, so nothing is denied the second time.
    assert again.tags.denied == ()
    expected = dataclasses.replace(c, source=None, tags=dataclasses.replace(c.tags, denied=()))
    assert dataclasses.replace(again, source=None) == expected


# --- unreadable files and TOML syntax ----------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: cannot read config file: No such file or directory"
    assert info.value.path == p and info.value.key is None


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file: Is a directory") as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ")


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(b'[output]\npath = "\xff"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 \(bad byte at offset 17\)") as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: ")


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[probes]\nring_pages 4096\n")
    assert "invalid TOML" in str(err)
    assert re.search(r"line 2, column \d+", str(err)), str(err)
    assert err.key is None


def test_parse_config_without_file_uses_placeholder_label() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[probes]\nring_pages = 1000\n")
    assert str(info.value) == "<config>: probes.ring_pages: must be a power of two, got 1000"
    assert info.value.path is None


# --- unknown sections and keys -----------------------------------------------------------


def test_unknown_section(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[probe]\nring_pages = 8\n")
    assert_names_key(err, "probe")
    assert "unknown section" in str(err)
    assert "did you mean 'probes'?" in str(err)
    assert "known sections: output, tags, probes, process_table" in str(err)


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[probes]\nring_page = 8\n")
    assert_names_key(err, "probes.ring_page")
    msg = str(err)
    assert "unknown key" in msg
    assert "did you mean 'ring_pages'?" in msg
    assert (
        "known keys in [probes]: ring_pages, first_bytes, max_args, arg_size, env_scan, "
        "poll_interval_ms" in msg
    )


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[output]\nzzzzzz = 1\n")
    assert_names_key(err, "output.zzzzzz")
    assert "did you mean" not in str(err)
    assert "known keys in [output]: path, metrics_interval_s" in str(err)


def test_nested_table_is_unknown_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[tags.more]\nx = 1\n")
    assert_names_key(err, "tags.more")


def test_section_must_be_a_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, "output = 5\n")
    assert_names_key(err, "output")
    assert "expected a table ([output]), got an integer (5)" in str(err)


# --- wrong types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            "[probes]\nring_pages = true",
            "probes.ring_pages",
            "expected an integer, got a boolean (true)",
        ),
        (
            "[process_table]\nmax_lineage = false",
            "process_table.max_lineage",
            "expected an integer, got a boolean (false)",
        ),
        (
            "[output]\nmetrics_interval_s = true",
            "output.metrics_interval_s",
            "expected a number, got a boolean (true)",
        ),
        (
            "[probes]\nring_pages = 4096.0",
            "probes.ring_pages",
            "expected an integer, got a float (4096.0)",
        ),
        (
            '[probes]\nring_pages = "4096"',
            "probes.ring_pages",
            'expected an integer, got a string ("4096")',
        ),
        ("[output]\npath = 1", "output.path", "expected a string, got an integer (1)"),
        ("[output]\npath = 1979-05-27", "output.path", "expected a string, got a date"),
        (
            '[tags]\nepisode = "RL_EPISODE_ID"',
            "tags.episode",
            'expected an array of strings, got a string ("RL_EPISODE_ID")',
        ),
        ('[tags]\nepisode = ["A", 5]', "tags.episode[1]", "expected a string, got an integer (5)"),
        ('[tags]\ndeny = [["A"]]', "tags.deny[0]", 'expected a string, got an array (["A"])'),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, text + "\n")
    assert_names_key(err, key)
    assert reason in str(err), str(err)


def test_bool_is_never_an_int() -> None:
    # Direct check on the dict path too: True == 1 in Python, and 1 is in range for max_args.
    with pytest.raises(ConfigError, match="expected an integer, got a boolean"):
        config_from_dict({"probes": {"max_args": True}})


# --- bad values ------------------------------------------------------------------------------


def test_power_of_two_message_matches_spec(tmp_path: Path) -> None:
    p = write(tmp_path, "[probes]\nring_pages = 1000\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: probes.ring_pages: must be a power of two, got 1000"
    assert info.value.key == "probes.ring_pages"


@pytest.mark.parametrize(
    ("section", "key", "value", "rule"),
    [
        ("output", "metrics_interval_s", 0.05, "between 0.1 and 3600"),
        ("output", "metrics_interval_s", 3601, "between 0.1 and 3600"),
        ("output", "metrics_interval_s", "nan", "between 0.1 and 3600"),
        ("output", "metrics_interval_s", "inf", "between 0.1 and 3600"),
        ("probes", "ring_pages", 4, "between 8 and 262144"),
        ("probes", "ring_pages", 524288, "between 8 and 262144"),
        ("probes", "first_bytes", 128, "between 256 and 4096"),
        ("probes", "first_bytes", 8192, "between 256 and 4096"),
        ("probes", "first_bytes", 300, "a power of two"),
        ("probes", "max_args", 0, "between 1 and 128"),
        ("probes", "max_args", 129, "between 1 and 128"),
        ("probes", "arg_size", 16, "between 32 and 4096"),
        ("probes", "arg_size", 100, "a power of two"),
        ("probes", "env_scan", 0, "between 1 and 1024"),
        ("probes", "env_scan", 1025, "between 1 and 1024"),
        ("probes", "poll_interval_ms", 0, "between 1 and 1000"),
        ("probes", "poll_interval_ms", -5, "between 1 and 1000"),
        ("process_table", "exit_grace_s", -0.5, "between 0 and 600"),
        ("process_table", "exit_grace_s", 601, "between 0 and 600"),
        ("process_table", "max_lineage", 0, "between 1 and 64"),
        ("process_table", "max_lineage", 65, "between 1 and 64"),
        ("process_table", "max_entries", 999, "between 1000 and 10000000"),
        ("process_table", "max_entries", 10_000_001, "between 1000 and 10000000"),
    ],
)
def test_out_of_range(tmp_path: Path, section: str, key: str, value: Any, rule: str) -> None:
    err = error_for(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert_names_key(err, f"{section}.{key}")
    assert f"must be {rule}, got {value}" in str(err), str(err)


def test_range_bounds_are_inclusive() -> None:
    c = config_from_dict(
        {
            "output": {"metrics_interval_s": 0.1},
            "probes": {"ring_pages": 262144, "first_bytes": 4096, "env_scan": 1024},
            "process_table": {"exit_grace_s": 0, "max_lineage": 64, "max_entries": 10_000_000},
        }
    )
    assert c.probes.ring_pages == 262144
    assert c.process_table.exit_grace_s == 0.0


def test_empty_output_path(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[output]\npath = ""\n')
    assert_names_key(err, "output.path")
    assert 'must be non-empty, got ""' in str(err)


def test_huge_int_for_float_is_a_range_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="between 0 and 600"):
        config_from_dict({"process_table": {"exit_grace_s": 10**400}})


@pytest.mark.parametrize(
    ("probes", "blame", "total"),
    [
        ({"max_args": 128, "arg_size": 4096}, "probes.max_args", 524288),  # too large
        ({"max_args": 64, "arg_size": 4096}, "probes.max_args", 262144),  # too large
        ({"max_args": 3}, "probes.max_args", 768),  # 3 * 256: not a power of two
        ({"max_args": 48, "arg_size": 64}, "probes.max_args", 3072),
    ],
)
def test_argv_buffer_rule(tmp_path: Path, probes: dict[str, int], blame: str, total: int) -> None:
    err = error_for(tmp_path, to_toml({"probes": probes}))
    assert_names_key(err, blame)
    assert f"= {total}: must be a power of two no larger than 131072" in str(err), str(err)


@pytest.mark.parametrize(("max_args", "arg_size"), [(32, 4096), (128, 1024), (1, 32)])
def test_argv_buffer_limits_are_inclusive(max_args: int, arg_size: int) -> None:
    c = config_from_dict({"probes": {"max_args": max_args, "arg_size": arg_size}})
    assert (c.probes.max_args, c.probes.arg_size) == (max_args, arg_size)


def test_argv_buffer_blames_the_key_the_user_set() -> None:
    # With max_args at its default no arg_size in range is too large, so test the rule itself.
    bad = {"max_args": 64, "arg_size": 4096}
    for given_keys, blame in [
        ({"arg_size"}, "arg_size"),
        ({"max_args"}, "max_args"),
        ({"max_args", "arg_size"}, "max_args"),
    ]:
        with pytest.raises(cfg._Invalid) as inv:
            cfg._finish_probes(dict(bad), frozenset(given_keys))
        assert inv.value.key == blame


@pytest.mark.parametrize(
    "name",
    ["1ABC", "MY-VAR", "MY VAR", "", "A" * 33, "ÄPFEL", "A=B", "ABC\n"],
)
def test_bad_env_key_names(tmp_path: Path, name: str) -> None:
    err = error_for(tmp_path, to_toml({"tags": {"extra": ["GOOD", name]}}))
    assert_names_key(err, "tags.extra[1]")
    assert "must be an environment variable name" in str(err)
    assert "at most 32 characters" in str(err)


def test_env_key_of_32_chars_is_fine() -> None:
    name = "A" * 32
    assert config_from_dict({"tags": {"extra": [name]}}).tags.extra == (name,)


@pytest.mark.parametrize("pattern", ["", "AWS_*=", "*KEY* ", "X" * 65, "A.B", "$HOME"])
def test_bad_deny_pattern(tmp_path: Path, pattern: str) -> None:
    err = error_for(tmp_path, to_toml({"tags": {"deny": [pattern]}}))
    assert_names_key(err, "tags.deny[0]")
    assert "must be a glob pattern" in str(err)


# --- tags -------------------------------------------------------------------------------------


def test_deny_wins_over_every_role() -> None:
    c = config_from_dict(
        {
            "tags": {
                "episode": ["RL_EPISODE_ID", "EPISODE_AUTH"],
                "worker": ["MY_TOKEN", "RANK"],
                "extra": ["AWS_REGION", "HOME", "MY_TOKEN"],
            }
        }
    )
    t = c.tags
    assert t.episode == ("RL_EPISODE_ID",)
    assert t.worker == ("RANK",)
    assert t.extra == ("HOME",)
    assert dict(t.denied) == {
        "EPISODE_AUTH": "*AUTH*",
        "MY_TOKEN": "*TOKEN*",
        "AWS_REGION": "AWS_*",
    }
    assert [k for k, _ in t.denied] == ["EPISODE_AUTH", "MY_TOKEN", "AWS_REGION"]  # each once
    assert not set(dict(t.denied)) & set(t.keys)


def test_deny_is_case_insensitive() -> None:
    c = config_from_dict({"tags": {"extra": ["github_token", "Aws_Region"], "deny": ["*Token*"]}})
    assert c.tags.extra == ("Aws_Region",)
    assert c.tags.denied == (("github_token", "*Token*"),)


def test_empty_deny_list_denies_nothing() -> None:
    c = config_from_dict({"tags": {"extra": ["API_KEY"], "deny": []}})
    assert c.tags.extra == ("API_KEY",)
    assert c.tags.denied == ()


def test_keys_are_ordered_deduplicated_union() -> None:
    c = config_from_dict(
        {
            "tags": {
                "episode": ["E1", "E2", "E1"],
                "worker": ["W", "E2"],
                "run": [],
                "trajectory": ["T"],
                "sandbox": ["S"],
                "extra": ["X", "W"],
            }
        }
    )
    assert c.tags.episode == ("E1", "E2")  # de-duplicated within a role too
    assert c.tags.keys == ("E1", "E2", "W", "T", "S", "X")
    assert c.tags.role_of("E2") == "episode"  # the first role listing it
    assert c.tags.role_of("W") == "worker"
    assert c.tags.role_of("X") == "extra"
    with pytest.raises(KeyError):
        c.tags.role_of("NOT_CONFIGURED")


def test_role_of_defaults() -> None:
    t = load_config(None).tags
    assert t.role_of("TASK_ID") == "episode"
    assert t.role_of("LOCAL_RANK") == "worker"
    assert t.role_of("SLURM_JOB_ID") == "run"
    assert t.role_of("RL_TRAJECTORY_ID") == "trajectory"
    assert t.role_of("RL_SANDBOX_ID") == "sandbox"
    assert {t.role_of(k) for k in t.keys} <= set(cfg.TAG_ROLES)


def _many(n: int) -> list[str]:
    return [f"K{i}" for i in range(n)]


def test_key_limit(tmp_path: Path) -> None:
    empty: dict[str, list[str]] = {r: [] for r in cfg.TAG_ROLES}
    ok = config_from_dict({"tags": {**empty, "extra": _many(24)}})
    assert len(ok.tags.keys) == 24
    err = error_for(tmp_path, to_toml({"tags": {**empty, "extra": _many(25)}}))
    assert_names_key(err, "tags")
    assert "25 environment keys" in str(err)
    assert "kernel limit of 24 (RLG_MAX_TAGS)" in str(err)


def test_key_limit_counts_after_deny_and_dedup() -> None:
    empty: dict[str, list[str]] = {r: [] for r in cfg.TAG_ROLES}
    c = config_from_dict(
        {"tags": {**empty, "episode": _many(24), "worker": ["K0", "K1"], "extra": ["SECRET_X"]}}
    )
    assert len(c.tags.keys) == 24
    assert c.tags.denied == (("SECRET_X", "*SECRET*"),)


def test_default_keys_over_limit_with_extra() -> None:
    # 14 default keys + 11 extra = 25: the user learns about the limit, not a kernel failure.
    with pytest.raises(ConfigError, match="more than the kernel limit of 24"):
        config_from_dict({"tags": {"extra": _many(11)}})


# --- rules ------------------------------------------------------------------------------------


def test_rule_settings(tmp_path: Path) -> None:
    c = load_config(
        write(
            tmp_path,
            '[rules]\nmin_severity = "high"\n'
            '[rules."RLG-TUN-002"]\nenabled = false\n'
            '[rules."RLG-MIN-004"]\nseverity = "medium"\n',
        )
    )
    assert c.rules.min_severity == "high"
    assert c.rules.settings("RLG-TUN-002") == cfg.RuleSettings(enabled=False, severity="")
    assert c.rules.settings("RLG-MIN-004") == cfg.RuleSettings(enabled=True, severity="medium")
    assert c.rules.settings("RLG-TUN-001") is None
    assert c.as_dict()["rules"] == {
        "min_severity": "high",
        "RLG-MIN-004": {"enabled": True, "severity": "medium"},
        "RLG-TUN-002": {"enabled": False, "severity": ""},
    }
    # the order in the file does not matter
    again = parse_config(
        '[rules."RLG-MIN-004"]\nseverity = "medium"\n[rules."RLG-TUN-002"]\nenabled = false\n'
        '[rules]\nmin_severity = "high"\n'
    )
    assert again.rules == c.rules


def test_rule_defaults_change_nothing() -> None:
    c = load_config(None)
    assert c.rules == cfg.RulesConfig(min_severity="low", overrides=())
    assert c.as_dict()["rules"] == {"min_severity": "low"}


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[rules."RLG-TUN-009"]\nenabled = false\n',
            'rules."RLG-TUN-009"',
            "unknown rule id; did you mean 'RLG-TUN-00",
        ),
        (
            '[rules."RLG-TUN-002"]\nseverity = "urgent"\n',
            'rules."RLG-TUN-002".severity',
            'must be one of "", "low", "medium", "high", "critical", got "urgent"',
        ),
        (
            '[rules."RLG-TUN-002"]\nenabled = "no"\n',
            'rules."RLG-TUN-002".enabled',
            'expected a boolean, got a string ("no")',
        ),
        (
            '[rules."RLG-TUN-002"]\nenable = false\n',
            'rules."RLG-TUN-002".enable',
            "unknown key; did you mean 'enabled'? known keys in [rules.\"RLG-TUN-002\"]: "
            "enabled, severity",
        ),
        (
            '[rules]\n"RLG-TUN-002" = false\n',
            'rules."RLG-TUN-002"',
            'expected a table ([rules."RLG-TUN-002"]), got a boolean (false)',
        ),
        (
            '[rules]\nmin_sev = "low"\n',
            "rules.min_sev",
            "did you mean 'min_severity'? known keys in [rules]: min_severity, and a table "
            '[rules."RLG-TUN-002"] per rule id',
        ),
        (
            '[rules]\nmin_severity = "info"\n',
            "rules.min_severity",
            'must be one of "low", "medium", "high", "critical", got "info"',
        ),
    ],
)
def test_bad_rule_settings_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    err = error_for(tmp_path, text)
    assert_names_key(err, key)
    assert message in str(err)


def test_unknown_rule_ids_are_checked_against_the_shipped_catalogue() -> None:
    ids = cfg.catalogue_rule_ids()
    assert "RLG-TUN-002" in ids and len(ids) == len(set(ids))
    assert cfg.catalogue_rule_ids(REPO / "no-such-file.toml") == ()


# --- FNV-1a -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("", 0xCBF29CE484222325),
        ("a", 0xAF63DC4C8601EC8C),
        ("b", 0xAF63DF4C8601F1A5),
        ("foo", 0xDCB27518FED9D577),
        ("foobar", 0x85944171F73967E8),
    ],
)
def test_fnv1a_64_vectors(key: str, expected: int) -> None:
    assert fnv1a_64(key) == expected


def test_fnv1a_64_rejects_non_ascii() -> None:
    with pytest.raises(ValueError):
        fnv1a_64("ÄPFEL")


@given(st.text(alphabet=string.printable, max_size=40))
def test_fnv1a_64_is_64_bit_and_incremental(key: str) -> None:
    # Reference: the textbook definition over Python ints, reduced at the end only.
    h = 0xCBF29CE484222325
    for b in key.encode("ascii"):
        h = ((h ^ b) * 0x100000001B3) % 2**64
    assert fnv1a_64(key) == h
    assert 0 <= fnv1a_64(key) < 2**64


# --- schema, example file, kernel header ------------------------------------------------------


def test_schema_matches_result_dataclasses() -> None:
    config_fields = [f.name for f in dataclasses.fields(cfg.Config)]
    assert config_fields == [s.name for s in cfg.SCHEMA] + ["source"]
    for spec in cfg.SCHEMA:
        result_fields = [f.name for f in dataclasses.fields(spec.result)]
        assert result_fields[: len(spec.fields)] == [f.name for f in spec.fields]
        assert spec.result.__dataclass_params__.frozen
    tags = next(s for s in cfg.SCHEMA if s.name == "tags")
    assert [f.name for f in tags.fields] == [*cfg.TAG_ROLES, "deny"]


def test_every_field_has_a_doc() -> None:
    for spec in cfg.SCHEMA:
        assert spec.doc
        for f in spec.fields:
            assert f.doc.strip(), f"{spec.name}.{f.name}"


def test_shipped_example_equals_render_example() -> None:
    shipped = cfg.EXAMPLE_PATH.read_text(encoding="utf-8")
    assert shipped == render_example(), (
        "monitor/data/rlguard.example.toml is stale; regenerate with: python -c "
        "'from monitor.config import render_example; print(render_example(), end=\"\")' "
        "> monitor/data/rlguard.example.toml"
    )


def test_example_loads_back_to_defaults() -> None:
    c = load_config(cfg.EXAMPLE_PATH)
    assert c.source == cfg.EXAMPLE_PATH
    assert dataclasses.replace(c, source=None) == load_config(None)


def test_example_sets_every_key_and_is_commented() -> None:
    text = render_example()
    for spec in cfg.SCHEMA:
        assert f"\n[{spec.name}]\n" in text
        for f in spec.fields:
            assert re.search(rf"^{f.name} = ", text, re.M), f.name
    assert all(len(line) <= 100 for line in text.splitlines())


def _header_defines() -> dict[str, int]:
    defines: dict[str, int] = {}
    # the layouts header first: its defaults are the ones the program sees
    paths = sorted((REPO / "probes").rglob("*.[ch]"), key=lambda p: p.name != "rlguard.h")
    for path in paths:
        for m in re.finditer(r"^#define (RLG_\w+) (\d+)\b", path.read_text(), re.M):
            defines.setdefault(m.group(1), int(m.group(2)))
    return defines


def test_constants_match_kernel_header() -> None:
    d = _header_defines()
    if not d:
        pytest.skip("probes/ not present")
    assert d["RLG_MAX_TAGS"] == cfg.MAX_TAGS
    assert d["RLG_TAG_KEY_LEN"] == cfg.TAG_KEY_LEN
    defaults = load_config(None).probes
    assert d["RLG_MAX_ARGS"] == defaults.max_args
    assert d["RLG_ARG_SIZE"] == defaults.arg_size
    assert d["RLG_ENV_SCAN"] == defaults.env_scan
    assert d["RLG_FIRST_BYTES"] == defaults.first_bytes
    assert d["RLG_RING_PAGES"] == defaults.ring_pages


# --- property tests ---------------------------------------------------------------------------

env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,31}", fullmatch=True)


def pow2(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.sampled_from([2**i for i in range(20) if lo <= 2**i <= hi])


DEFAULTS = load_config(None)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Random valid documents: any subset of sections and keys, values within the rules."""
    candidates: dict[str, dict[str, Any]] = {
        "output": {
            "path": draw(st.sampled_from(["-", "/var/log/rlguard.ndjson", "out file.json"])),
            "metrics_interval_s": draw(st.one_of(st.floats(0.1, 3600), st.integers(1, 3600))),
        },
        "tags": {
            **{r: draw(st.lists(env_names, max_size=4)) for r in cfg.TAG_ROLES},
            "deny": draw(
                st.lists(st.sampled_from(["*KEY*", "A*", "*_ID", "X?Z", "[!A]*"]), max_size=3)
            ),
        },
        "probes": {
            "ring_pages": draw(pow2(8, 262144)),
            "first_bytes": draw(pow2(256, 4096)),
            "max_args": draw(pow2(1, 128)),
            "arg_size": draw(pow2(32, 4096)),
            "env_scan": draw(st.integers(1, 1024)),
            "poll_interval_ms": draw(st.integers(1, 1000)),
        },
        "process_table": {
            "exit_grace_s": draw(st.one_of(st.floats(0, 600), st.integers(0, 600))),
            "max_lineage": draw(st.integers(1, 64)),
            "max_entries": draw(st.integers(1000, 10_000_000)),
        },
    }
    doc: dict[str, dict[str, Any]] = {}
    for section, values in candidates.items():
        if draw(st.booleans()):
            doc[section] = {k: v for k, v in values.items() if draw(st.booleans())}
    probes = {**{"max_args": 32, "arg_size": 256}, **doc.get("probes", {})}
    assume(probes["max_args"] * probes["arg_size"] <= cfg.ARGS_BUF_MAX)
    # stay within the kernel's key limit (roles not given keep their default keys)
    tags = {**{r: list(getattr(DEFAULTS.tags, r)) for r in cfg.TAG_ROLES}, **doc.get("tags", {})}
    assume(len({k for r in cfg.TAG_ROLES for k in tags[r]}) <= cfg.MAX_TAGS)
    return doc


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=valid_configs())
def test_random_valid_configs_load(tmp_path: Path, doc: dict[str, dict[str, Any]]) -> None:
    p = write(tmp_path, to_toml(doc))
    c = load_config(p)
    defaults = load_config(None)
    for spec in cfg.SCHEMA:
        section = getattr(c, spec.name)
        for f in spec.fields:
            got = getattr(section, f.name)
            if f.name in doc.get(spec.name, {}) and spec.name != "tags":
                assert got == doc[spec.name][f.name]
            elif spec.name != "tags":
                assert got == getattr(getattr(defaults, spec.name), f.name)
    # Tags: every listed key is either kept (with a role) or denied, never both.
    tags = c.tags
    listed = {k for r in cfg.TAG_ROLES for k in getattr(tags, r)} | set(dict(tags.denied))
    src = {**{r: list(getattr(defaults.tags, r)) for r in cfg.TAG_ROLES}, **doc.get("tags", {})}
    assert listed == {k for r in cfg.TAG_ROLES for k in src[r]}
    assert set(tags.keys).isdisjoint(dict(tags.denied))
    assert len(tags.keys) == len(set(tags.keys)) <= cfg.MAX_TAGS
    for key in tags.keys:
        assert cfg._deny_match(key, tags.deny) is None
        assert key in src[tags.role_of(key)]


junk_keys = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=20)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from([s.name for s in cfg.SCHEMA]), junk=junk_keys)
def test_random_junk_keys_are_rejected(tmp_path: Path, section: str, junk: str) -> None:
    spec = next(s for s in cfg.SCHEMA if s.name == section)
    assume(spec.field(junk) is None)
    err = error_for(tmp_path, f"[{section}]\n{junk} = 1\n")
    assert_names_key(err, f"{section}.{junk}")
    assert f"known keys in [{section}]: " + ", ".join(f.name for f in spec.fields) in str(err)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=junk_keys)
def test_random_junk_sections_are_rejected(tmp_path: Path, junk: str) -> None:
    assume(junk not in {s.name for s in cfg.SCHEMA})
    err = error_for(tmp_path, f"[{junk}]\n")
    assert_names_key(err, junk)
    assert "unknown section" in str(err)


non_ints = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@given(
    target=st.sampled_from(
        [(s.name, f.name) for s in cfg.SCHEMA for f in s.fields if f.kind is cfg.Kind.INT]
    ),
    value=non_ints,
)
def test_int_fields_reject_every_other_type(target: tuple[str, str], value: Any) -> None:
    section, key = target
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    assert info.value.key == f"{section}.{key}"
    assert "expected an integer, got " in str(info.value)
