"""The docs cannot rot: their commands run, their API page and config table
match the code, their links and index are complete.

- `scripts/check_docs.py` runs every shell command in README.md and docs/
  against a real service, or checks that the test it is mapped to exists;
- docs/api.md equals what `scripts/gen_api_docs.py` writes from the OpenAPI
  document;
- the operator guide's training-config table lists every key of
  `TrainingConfig` with its current default;
- every relative link points at a file, and docs/README.md lists every page.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


check_docs = _script("check_docs")
gen_api_docs = _script("gen_api_docs")


# --- the command check ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)  # ≈ 1 min of CPU; the wall time grows with the machine's load
def test_every_doc_command_runs_or_is_mapped() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_docs.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert re.search(r"\d+ commands run \(\d+ more repeat them\), \d+ mapped", done.stdout)


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_commands_are_joined_across_continuations_and_quotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_docs, "REPO", tmp_path)
    page = _page(
        tmp_path,
        "```sh\n"
        "# a comment line\n"
        "fedge push --model digits \\\n"
        "    out/mlp            # trailing comment\n"
        "curl -d '{\n"
        '  "a": 1  # not a comment inside quotes\n'
        "}'\n"
        "```\n"
        "```console\n"
        "$ fedge models list\n"
        '{"models": []}\n'
        "```\n",
    )
    found, problems = check_docs.commands_in(page)
    assert problems == []
    assert [c.text for c in found] == [
        "fedge push --model digits out/mlp",
        """curl -d '{ "a": 1 # not a comment inside quotes }'""",
        "fedge models list",
    ]
    assert [c.line for c in found] == [3, 5, 10]


def test_an_untagged_block_holding_a_command_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_docs, "REPO", tmp_path)
    page = _page(tmp_path, "```\n$ fedge simulate fleet.yaml --out r\n```\n```text\nfedge x\n```\n")
    found, problems = check_docs.commands_in(page)
    assert found == []
    assert len(problems) == 1 and "tag it ```sh" in problems[0] and "page.md:2" in problems[0]


def test_a_command_without_a_rule_fails_and_so_does_an_unused_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = (r"fedge models list", check_docs.Run())
    unused = (r"fedge never-documented", check_docs.Run())
    monkeypatch.setattr(check_docs, "RULES", [rule, unused])
    cmds = [
        check_docs.Command("docs/x.md", 3, "fedge models list"),
        check_docs.Command("docs/x.md", 4, "rm -rf /"),
    ]
    matched, problems = check_docs.classify(cmds)
    assert [c.text for c, _ in matched] == ["fedge models list"]
    assert any("docs/x.md:4" in p and "neither run nor mapped" in p for p in problems)
    assert any("fedge never-documented" in p and "matches no command" in p for p in problems)


def test_a_mapped_test_that_does_not_exist_is_reported() -> None:
    here = "tests/test_docs.py::test_docs_index_lists_every_page"
    gone = "tests/test_docs.py::test_that_was_renamed"
    elsewhere = "tests/no_such_file.py::test_x"
    assert check_docs.missing_nodes({here, gone, elsewhere}) == sorted([gone, elsewhere])


def test_a_run_fails_on_exit_status_missing_output_or_a_failed_check(tmp_path: Path) -> None:
    sandbox = check_docs.Sandbox(tmp_path)
    sandbox.work.mkdir()
    sandbox.env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    sandbox.url = "http://127.0.0.1:9"

    def run(text: str, rule: object) -> str | None:
        result: str | None = sandbox.shell(check_docs.Command("docs/x.md", 1, text), rule)
        return result

    assert run("echo ready", check_docs.Run(expect="ready")) is None
    assert "exit 3" in (run("exit 3", check_docs.Run()) or "")
    assert "lacks /done/" in (run("echo ready", check_docs.Run(expect="done")) or "")
    assert "exit 1" in (run("touch made", check_docs.Run(then="test -s made")) or "")
    # The documented server address becomes the sandbox's.
    assert run("echo http://127.0.0.1:8080/x", check_docs.Run(expect=":9/x")) is None


def test_every_page_is_covered_by_the_rules() -> None:
    """The fast half of the check: every command has a rule (no run needed)."""
    matched, problems = check_docs.collect()
    assert problems == []
    assert matched


# --- the API page ------------------------------------------------------------------------------


def test_api_page_is_generated_from_the_openapi_document() -> None:
    assert (DOCS / "api.md").read_text(encoding="utf-8") == gen_api_docs.generate(), (
        "docs/api.md is out of date with aggregation_service/openapi.py; "
        "run: python scripts/gen_api_docs.py"
    )


def test_api_page_lists_every_route_with_its_auth() -> None:
    from aggregation_service.openapi import openapi_document

    page = (DOCS / "api.md").read_text(encoding="utf-8")
    for path, item in openapi_document()["paths"].items():
        for method in item:
            assert f"### {method.upper()} `{path}`" in page


def test_api_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert gen_api_docs.main(["--check", "--out", str(stale)]) == 1
    assert gen_api_docs.main(["--out", str(stale)]) == 0
    assert gen_api_docs.main(["--check", "--out", str(stale)]) == 0


# --- the operator guide's configuration table ------------------------------------------------


def _flatten(data: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "codec":  # the codec is one value, a spec
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_operator_guide_lists_every_training_key_with_its_default() -> None:
    from aggregation_service.config import TrainingConfig

    text = (DOCS / "operator-guide.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_.0-9]+)` \| `([^`]*)` \|", text, flags=re.M))
    defaults = _flatten(TrainingConfig().to_dict())
    assert sorted(rows) == sorted(defaults), "keys missing from or extra in the guide's table"
    for key, value in defaults.items():
        assert json.loads(rows[key]) == value, f"{key}: the guide says {rows[key]}, code {value!r}"


def test_the_guides_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DOCS / "operator-guide.md").read_text(encoding="utf-8")
    found = re.search(r"```ini\n# /etc/systemd/system/fedge.service\n(.*?)```", text, re.S)
    assert found is not None, "the guide's unit file block is gone"
    unit = found.group(1)
    # Every setting on a line of its own: systemd has no trailing comments.
    assert not re.search(r"^[A-Za-z]+=[^\n]*[ \t]#", unit, flags=re.M)
    fedge = Path(sys.executable).parent / "fedge"
    path = tmp_path / "fedge.service"
    path.write_text(unit.replace("/opt/fedge/bin/fedge", str(fedge)), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and path.name not in done.stderr, done.stderr


# --- links and the index -------------------------------------------------------------------


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(page: Path) -> str:
    """The page without its fenced blocks (a `# comment` there is no heading)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces → '-'."""
    headings = re.findall(r"^#{1,6}\s+(.+)$", _prose(page), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to {target} points at nothing"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: no heading for {target}"


def test_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([a-z0-9_.-]+\.md)\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages - listed == set(), "docs/README.md does not list these pages"
