"""The kernel program's files are spliced into one compile unit (probes.program_text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.sensor import probes
from monitor.sensor.probes import program_text

pytestmark = pytest.mark.unit

MARK = re.compile(r'^#line (\d+) "(.*)"$')


def starts(text: str) -> list[str]:
    """The files in the order their text begins (`#line 1` markers)."""
    return [m.group(2) for m in map(MARK.match, text.splitlines()) if m and m.group(1) == "1"]


def test_every_file_in_probes_is_spliced_once() -> None:
    text = program_text()
    files = starts(text)
    on_disk = sorted(str(p.resolve()) for p in probes.PROBES_DIR.rglob("*.[ch]"))
    assert sorted(files) == on_disk  # none left out, none twice
    assert files[0].endswith("/rlguard.bpf.c")
    # no quoted include is left for the compiler: bcc would not rewrite its code
    assert not re.search(r'^\s*#\s*include\s+"', text, re.M)


def test_splicing_keeps_line_numbers_and_resolves_from_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve() / "probes"
    (root / "lib").mkdir(parents=True)
    (root / "main.c").write_text('int a;\n#include "lib/x.h"\n#include "y.h"\nint b;\n')
    # x.h names y.h relative to itself first, then to the probes folder
    (root / "lib" / "x.h").write_text('#include "y.h"\nint x;\n#include "x.h"\n')
    (root / "lib" / "y.h").write_text("int lib_y;\n")
    (root / "y.h").write_text("int top_y;\n")
    (root / "main2.c").write_text('#include "missing.h"\n#include <linux/types.h>\n')
    monkeypatch.setattr(probes, "PROBES_DIR", root)
    main, x, y_lib, y_top = (
        str(p) for p in (root / "main.c", root / "lib/x.h", root / "lib/y.h", root / "y.h")
    )
    assert program_text(root / "main.c").splitlines() == [
        f'#line 1 "{main}"',
        "int a;",
        f'#line 1 "{x}"',
        f'#line 1 "{y_lib}"',
        "int lib_y;",
        f'#line 2 "{x}"',
        "int x;",
        f'#line 4 "{x}"',  # x.h again: once only
        f'#line 3 "{main}"',
        f'#line 1 "{y_top}"',
        "int top_y;",
        f'#line 4 "{main}"',
        "int b;",
    ]
    # what names no file, and angle includes, are the compiler's to resolve or report
    assert program_text(root / "main2.c").splitlines()[1:] == [
        '#include "missing.h"',
        "#include <linux/types.h>",
    ]
