#!/usr/bin/env python3
"""Check that every shell command in the docs works, or is exercised by a test.

    python scripts/check_docs.py            # run the check (about a minute)
    python scripts/check_docs.py --list     # how each command is handled, without running

Every command in a fenced ```sh / ```bash / ```shell block, and every `$ `
line of a ```console block, in README.md and docs/*.md is matched against
RULES (first match wins) and is then either

- RUN: executed with bash in a scratch directory, against a real
  `fedge serve` this script starts on a free loopback port, with a fresh
  operator token, HOME and data; placeholders (`TOKEN`, `<token>`, `DIR`,
  the documented 127.0.0.1:8080 / 10.0.0.2:8080 servers) are filled in, and
  commands that are slow or never end are replaced by a time-bounded form of
  the same command that the rule spells out; it must exit 0 (and print what
  the rule expects); or
- MAPPED: the rule names the pytest node that exercises it, and the node
  must exist (`pytest --collect-only`).

A command that matches no rule fails the check, and so does a rule that no
command uses (it would hide a deleted or reworded command). A fenced block
without a language whose lines look like commands fails too: tag it ```sh to
have it checked, or ```text if it is output. tests/test_docs.py runs this
script, so `make test` does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL_LANGS = {"sh", "bash", "shell", "console"}
# An untagged block whose line starts like this is probably a command.
COMMANDISH = re.compile(r"^\s*(\$ |fedge |make |pip |python3? |curl |sudo |systemctl )")


@dataclass(frozen=True)
class Command:
    doc: str  # path relative to the repository
    line: int
    text: str  # continuation lines joined, trailing comment and `$ ` removed


@dataclass(frozen=True)
class Run:
    """Run the command in the sandbox; it must exit 0.

    `instead` replaces a slow or never-ending command by a bounded form of
    the same thing; `then` is a shell check appended after it; `expect` a
    regular expression its output must contain; `background` starts it,
    waits for the port file it was given, checks /healthz and stops it with
    SIGTERM (a clean stop must exit 0)."""

    phase: int = 2  # 0: before the sandbox's model is pushed, 1: pushes, 2: the rest
    instead: str | None = None
    then: str | None = None
    expect: str | None = None
    background: bool = False
    alongside: bool = False  # shares nothing with the other commands: run it in parallel
    timeout: float = 180.0  # a safety net on a loaded machine, not a target
    why: str = ""


@dataclass(frozen=True)
class Mapped:
    node: str  # pytest node id
    why: str


Rule = tuple[str, Run | Mapped]

# A substitution every RUN command gets: the documented servers are the sandbox's.
SERVERS = re.compile(r"https?://(127\.0\.0\.1|10\.0\.0\.2|localhost):8080")

RULES: list[Rule] = [
    # --- the whole product --------------------------------------------------------------
    (
        r"make demo",
        Run(
            instead="fedge demo --devices 6 --hours 1 --no-progress --out demo-report",
            then="test -s demo-report/summary.md && test -s demo-report/accuracy.png",
            alongside=True,  # its own service in its own temporary directory
            timeout=600,
            why="`make demo` runs `fedge demo`; here with 6 devices for one virtual hour",
        ),
    ),
    (
        r"make test",
        Mapped(
            "tests/test_docs.py::test_every_doc_command_runs_or_is_mapped",
            "this check is one of the tests `make test` runs",
        ),
    ),
    (
        r"make arm64-check",
        Mapped(
            "tests/test_arm64_script.py::test_device_check_passes_under_tflite_runtime_214",
            "the rootfs build takes 10-20 min and needs root; its device program is tested",
        ),
    ),
    (
        r"fedge bench .*",
        Mapped(
            "tests/test_bench_runner.py::test_runs_benchmarks_and_updates_readme",
            "the benchmarks take minutes; the runner and README update are tested",
        ),
    ),
    # --- environment ---------------------------------------------------------------------
    (
        r"export FEDGE_OPERATOR_TOKEN=\$\(python3 -c '.*'\)",
        Run(phase=0, then='test "${#FEDGE_OPERATOR_TOKEN}" -ge 16'),
    ),
    (
        r"export FEDGE_TFLITE_RUNTIME=tflite-runtime",
        Mapped(
            "tests/edge_client/test_cli.py::test_tflite_runtime_worker_in_its_own_interpreter",
            "needs the tflite-runtime environment (.venv-tflite)",
        ),
    ),
    (
        r"python3 -m venv ~/fedge && \. ~/fedge/bin/activate",
        Run(
            phase=0,
            instead="python3 -m venv --without-pip ~/fedge && . ~/fedge/bin/activate",
            then='test "$VIRTUAL_ENV" = ~/fedge && test -x ~/fedge/bin/python',
            why="without pip (installing pip takes seconds; `pip install` is mapped)",
        ),
    ),
    (
        r"sudo apt install python3-venv",
        Mapped(
            "tests/test_arm64_script.py::test_shell_script_parses_and_is_executable[build-rootfs.sh]",
            "needs root and the Debian archive; `make arm64-check` installs it in the rootfs",
        ),
    ),
    (
        r'pip install "fedge\[edge\]"',
        Mapped(
            "tests/test_foundation.py::test_edge_environment_has_no_tensorflow",
            "`make test` builds .venv-edge with exactly this install",
        ),
    ),
    (
        r"pip (install|uninstall) .*(tflite-runtime|ai-edge-litert|--no-deps).*",
        Mapped(
            "tests/edge_client/test_cli.py::test_tflite_runtime_worker_in_its_own_interpreter",
            "`make test` builds .venv-tflite with these packages",
        ),
    ),
    # --- export, serve, push ----------------------------------------------------------------
    (
        r"fedge export mlp --out out/mlp --input-shape 64 --classes 10",
        Run(
            phase=0,
            then="test -s out/mlp/model.tflite && test -s out/mlp/manifest.json",
            timeout=600,
        ),
    ),
    (
        r"fedge export (mlp|cnn|cnn1d|transfer) .*",
        Mapped(
            "tests/model_export/test_exports.py::test_reference_model_trains_on_digits[edge-cnn]",
            "each reference model is exported through the CLI and trained in the tests",
        ),
    ),
    (
        r"fedge export (charlstm|chargru|chartransformer) .*",
        Mapped(
            "tests/model_export/test_exports_more.py::"
            "test_char_model_trains_on_device_runtimes[edge-charlstm]",
            "each character model is exported through the CLI (shorter sequences) and trained "
            "under ai-edge-litert and tflite-runtime 2.14 in the tests",
        ),
    ),
    (
        r'fedge export kws\.keras --out out/kws --verify-python "\$FEDGE_TFLITE_PYTHON"',
        Mapped(
            "tests/model_export/test_training_settings.py::"
            "test_export_a_keras_file_honours_compile",
            "a compiled .keras file exported through the CLI, its optimizer honoured",
        ),
    ),
    (
        r"fedge export kws\.keras --out out/kws --optimizer .*",
        Mapped(
            "tests/model_export/test_training_settings.py::"
            "test_export_a_keras_file_with_flags_and_name",
            "flags override the compiled settings and the name",
        ),
    ),
    (
        r"fedge export saved_model_dir --out out/legacy",
        Mapped(
            "tests/model_export/test_training_settings.py::"
            "test_export_keras_2_saved_model_directory",
            "a Keras 2 SavedModel directory exported through the CLI",
        ),
    ),
    (
        r"fedge export models\.py:build .*",
        Mapped(
            "tests/model_export/test_cli.py::test_factory_export_prints_a_summary",
            "a factory export through the CLI",
        ),
    ),
    (
        r"fedge serve --data-dir srv &",
        Run(
            phase=0,
            instead="fedge serve --data-dir srv --port 0 --port-file serve.port",
            background=True,
            why="the sandbox's own server holds 8080's role; this one binds a free port",
        ),
    ),
    (
        r"fedge serve --data-dir /var/lib/fedge \[.*",
        Mapped(
            "tests/aggregation_service/test_process.py::test_cli_against_a_real_server",
            "a synopsis; serve with --config, --port-file and JSON logs is run there",
        ),
    ),
    (
        r"fedge push (--server \S+ )?--model digits out/mlp",
        Run(phase=1, expect=r'"version": \d+'),
    ),
    (
        r"fedge enroll-token (--server \S+ )?--uses \d+( --ttl \d+)?",
        Run(expect=r"(?m)^et-\S+$"),
    ),
    (
        r"fedge models (list|show digits|promote digits \d+"
        r"|rollback digits( --version \d+)?|pause digits|resume digits)",
        Run(expect=r'"model'),
    ),
    (r"fedge models config digits( --set \S+)*", Run(expect=r'"buffer_size"')),
    (r"fedge devices list( --state \w+)?", Run(expect=r'"devices"')),
    (
        r"fedge devices revoke DEVICE_ID",
        Mapped(
            "tests/edge_client/test_operator_cli.py::test_devices_list_and_revoke",
            "DEVICE_ID is a placeholder; the test enrolls devices and revokes one",
        ),
    ),
    (r"export FEDGE_SERVER=http://127\.0\.0\.1:8080", Run()),
    # --- the operator guide: deployment ------------------------------------------------------
    (
        r"fedge serve --data-dir /var/lib/fedge",
        Run(
            instead="fedge serve --data-dir srv-guide --port 0 --port-file guide.port",
            background=True,
            why="on a free port and a scratch data directory",
        ),
    ),
    (
        r"openssl req -x509 .* -keyout key\.pem -out cert\.pem",
        Run(then="test -s key.pem && test -s cert.pem"),
    ),
    (
        r"fedge serve --data-dir /var/lib/fedge --host 0\.0\.0\.0 --port 8443 "
        r"--tls-cert cert\.pem --tls-key key\.pem",
        Run(
            instead=(
                "fedge serve --data-dir srv-tls --host 127.0.0.1 --port 0 --port-file tls.port "
                "--tls-cert cert.pem --tls-key key.pem"
            ),
            background=True,
            why="HTTPS on loopback; /healthz is fetched trusting cert.pem",
        ),
    ),
    (
        r"sudo systemctl daemon-reload && sudo systemctl enable --now fedge\.service",
        Mapped(
            "tests/aggregation_service/test_process.py::test_cli_against_a_real_server",
            "no systemd here; the unit relies on `fedge serve` stopping cleanly (exit 0) on "
            "SIGTERM, which that test asserts",
        ),
    ),
    (
        r"sudo systemctl (stop|start) fedge\.service|cp -a /var/lib/fedge /backup/fedge-cold",
        Mapped(
            "tests/test_backup_restore.py::test_stopped_copy_restores_versions_and_buffer",
            "stop (SIGTERM), copy the directory, start on the copy",
        ),
    ),
    (
        r"sleep 5|mkdir -p /backup/fedge && sqlite3 .*|cp -a /var/lib/fedge/blobs .*"
        r"|mkdir -p /var/lib/fedge-restored && cp -a .*"
        r"|fedge serve --data-dir /var/lib/fedge-restored",
        Mapped(
            "tests/test_backup_restore.py::"
            "test_live_backup_with_the_guides_commands_restores_versions_and_buffer",
            "the test runs the guide's live-backup and restore blocks against real services",
        ),
    ),
    (
        r'python3 -c "from sklearn\.datasets import load_digits; .*"',
        Run(then="test -s heldout.npz"),
    ),
    (r"curl -fsS .*", Run(why="-f: an HTTP error fails the command")),
    (
        r"fedge (models|enroll-token) .*[\[|].*",
        Mapped(
            "tests/aggregation_service/test_process.py::test_cli_against_a_real_server",
            "a synopsis; each subcommand is run against a real server there",
        ),
    ),
    # --- the agent ----------------------------------------------------------------------------
    (
        r"fedge agent init --server \S+ --enroll-token (TOKEN|<token>) (?!--model sensors).*",
        Run(then="test -s ~/.config/fedge/agent.yaml"),
    ),
    (
        r"fedge agent run( --once)?",
        Mapped(
            "tests/edge_client/test_cli.py::test_init_run_once_status",
            "a cycle needs the host to be charging, idle and unmetered; the test fakes that",
        ),
    ),
    (
        r"fedge agent run --once --ignore-eligibility",
        Mapped(
            "tests/edge_client/test_run_once.py::"
            "test_busy_machine_exits_3_and_ignore_eligibility_trains",
            "the page's agent would train against the shared sandbox server; the test runs "
            "it on a machine that reports itself busy",
        ),
    ),
    (r"fedge agent check", Run(expect=r"data fits model 'digits'")),
    (r"fedge agent status", Run(expect=r"state")),
    (
        r"fedge agent install-service --user",
        Run(then="test -s ~/.config/systemd/user/fedge-agent.service"),
    ),
    (
        r"systemctl --user .*",
        Mapped(
            "tests/edge_client/test_cli.py::test_install_service_writes_a_restarting_unit",
            "no systemd user session in CI; the unit file is tested",
        ),
    ),
    # --- simulation -------------------------------------------------------------------------
    (
        r"fedge simulate \S+ --out \S+ --compare",
        Mapped(
            "tests/device_profiles/test_simulation.py::test_a_small_fleet_learns_and_repeats_exactly",
            "a comparison run takes minutes; a small fleet's full run is tested",
        ),
    ),
    # --- your own model and data (docs/own-model.md): its files ship in docs/examples ---
    (
        r"python3 make_data\.py",
        Run(
            instead='cp "$PYTHONPATH/docs/examples/make_data.py" . && {command}',
            then="test -s sensors.npz && test -s sensors-heldout.npz "
            "&& test -s data/device-a/part0.npz && test -s data/device-b/part0.csv",
            why="the page shows docs/examples/make_data.py; the user saves it first",
        ),
    ),
    (
        r"fedge export my_model\.py:build --out out/my-model",
        Run(
            instead='cp "$PYTHONPATH/docs/examples/my_model.py" . && {command}',
            then="test -s out/my-model/model.tflite && test -s out/my-model/manifest.json",
            timeout=600,
            why="the page shows docs/examples/my_model.py; the user saves it first",
        ),
    ),
    (
        r"fedge simulate sensors-fleet\.yaml --model-dir out/my-model --out sensors-report "
        r"--baseline",
        Run(
            instead=(
                'cp "$PYTHONPATH/docs/examples/sensors-fleet.yaml" . && {command} --no-progress'
            ),
            expect=r"central, same sequential steps: \d\.\d+ \(\d+ steps",
            timeout=600,
            why="the fleet file is the page's; without the progress bar",
        ),
    ),
    (r"fedge push --model sensors out/my-model", Run(expect=r'"version": 1')),
    (
        r"fedge models config sensors --set buffer_size=2 --set client\.epochs=5",
        Run(expect=r'"buffer_size": 2'),
    ),
    (r"fedge eval-data put sensors sensors-heldout\.npz", Run(expect=r'"examples": 400')),
    (
        r"fedge agent init --server \S+ --enroll-token TOKEN --model sensors .*",
        Run(expect=r"data fits model 'sensors' version 1: 300 examples of shape \(40, 1\)"),
    ),
    (
        r"fedge agent run --once --ignore-eligibility --config agent-[ab]\.yaml",
        Run(expect=r'"outcome": "uploaded"'),
    ),
    (
        r"for i in 1 2 3; do fedge agent run --once --ignore-eligibility --config agent-a\.yaml "
        r"&& fedge agent run --once --ignore-eligibility --config agent-b\.yaml; done",
        Run(timeout=300),
    ),
    (
        r"fedge models show sensors",
        Run(
            instead=(
                "for i in $(seq 120); do {command} > sensors-show.json; python3 -c "
                "\"import json, sys; v = json.load(open('sensors-show.json'))['versions']; "
                "sys.exit(len(v) < 5 or not all(x['metrics'] for x in v))\" && break; "
                "sleep 1; done; cat sensors-show.json"
            ),
            expect=r'"version": 5,(.|\n)*"accuracy"',
            why="versions are published and evaluated in the background: ask until version 5 "
            "and every version's evaluation are there",
        ),
    ),
    # --- privacy ----------------------------------------------------------------------------
    (
        r'curl -H "Authorization: Bearer \$FEDGE_OPERATOR_TOKEN" '
        r"\S+/versions/12/weights > v12\.bin",
        Run(
            instead=(
                'curl -fsS -H "Authorization: Bearer $FEDGE_OPERATOR_TOKEN" '
                "{url}/v1/models/digits/versions/1/weights > v12.bin"
            ),
            then="test -s v12.bin",
            why="the sandbox has version 1, not 12",
        ),
    ),
    (
        r"fedge audit membership .*",
        Mapped(
            "tests/privacy/test_cli.py::test_audit_of_an_overfit_version_from_a_weights_frame",
            "needs member and non-member data sets of a trained version",
        ),
    ),
    (
        r"fedge audit inversion .*",
        Mapped(
            "tests/privacy/test_audit_cli.py::test_inversion_from_the_command_line",
            "minutes at the documented sizes; the command at small sizes is tested",
        ),
    ),
    (
        r"fedge audit epsilon .*",
        Mapped(
            "tests/privacy/test_audit_cli.py::test_epsilon_from_the_command_line",
            "a 200-round run per noise level; the command at small sizes is tested",
        ),
    ),
    (
        r"fedge audit lira .*",
        Mapped(
            "tests/privacy/test_audit_cli.py::test_lira_from_the_command_line",
            "trains tens of models; the command at small sizes is tested",
        ),
    ),
    (
        r"curl -X PATCH .*/v1/models/digits/config -d .*",
        Run(instead="{command} --fail-with-body -sS", expect=r'"dp"'),
    ),
]


# --- extracting commands --------------------------------------------------------------------


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _strip_comment(line: str) -> str:
    """Drop a trailing `# comment` outside quotes (bash: `#` starting a word)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _quotes_open(text: str) -> bool:
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
    return bool(quote)


def blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, line number of the first content line, lines) per fenced block."""
    lang: str | None = None
    start, lines = 0, list[str]()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1).lower(), number + 1, []
        elif fence and lang is not None:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def commands_in(path: Path) -> tuple[list[Command], list[str]]:
    """The commands of one page, and problems (untagged command-like blocks)."""
    rel = str(path.relative_to(REPO))
    found: list[Command] = []
    problems: list[str] = []
    for lang, start, lines in blocks(path):
        if lang == "":
            for offset, line in enumerate(lines):
                if COMMANDISH.match(line):
                    problems.append(
                        f"{rel}:{start + offset}: a fenced block without a language holds "
                        f"what looks like a command ({line.strip()!r}): tag it ```sh to have "
                        "it checked, or ```text if it is output"
                    )
                    break
            continue
        if lang not in SHELL_LANGS:
            continue
        pending, first = "", 0
        for offset, raw in enumerate(lines):
            line = raw
            if lang == "console" and not pending:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            if not pending:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                first = start + offset
            # Inside an open quote, keep the text verbatim (it may hold '#').
            text = line if _quotes_open(pending) else _strip_comment(line)
            pending = f"{pending}\n{text}" if _quotes_open(pending) else pending + text
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            if _quotes_open(pending):
                continue
            found.append(Command(rel, first, " ".join(pending.split())))
            pending = ""
        if pending:
            problems.append(f"{rel}:{first}: unterminated command {pending!r}")
    return found, problems


def classify(cmds: list[Command]) -> tuple[list[tuple[Command, Rule]], list[str]]:
    matched: list[tuple[Command, Rule]] = []
    problems: list[str] = []
    for cmd in cmds:
        rule = next((r for r in RULES if re.fullmatch(r[0], cmd.text)), None)
        if rule is None:
            problems.append(
                f"{cmd.doc}:{cmd.line}: `{cmd.text}` is neither run nor mapped to a test: "
                "add a rule to RULES in scripts/check_docs.py (or fix the command)"
            )
        else:
            matched.append((cmd, rule))
    used = {pattern for _, (pattern, _) in matched}
    problems += [
        f"RULES entry {pattern!r} matches no command in the docs: remove it"
        for pattern, _ in RULES
        if pattern not in used
    ]
    return matched, problems


# --- mapped: the test must exist ------------------------------------------------------------


def missing_nodes(nodes: set[str]) -> list[str]:
    files = sorted({n.split("::")[0] for n in nodes if (REPO / n.split("::")[0]).is_file()})
    if not files:
        return sorted(nodes)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    collected = set(result.stdout.split())
    return sorted(n for n in nodes if n not in collected)


# --- run: the sandbox -----------------------------------------------------------------------


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def work(self) -> Path:
        return self.root / "work"

    def start(self) -> None:
        self.work.mkdir(parents=True)
        bindir = str(Path(sys.executable).parent)
        self.env = {
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root / "home"),
            "LANG": "C.UTF-8",
            "FEDGE_OPERATOR_TOKEN": secrets.token_urlsafe(24),
            "PYTHONPATH": str(REPO),
            "TMPDIR": str(self.root),
        }
        for var in ("FEDGE_EDGE_PYTHON", "FEDGE_TFLITE_PYTHON"):
            if var in os.environ:
                self.env[var] = os.environ[var]
        self._write_digits(self.work / "data")
        port_file = self.root / "server.port"
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aggregation_service",
                "serve",
                "--data-dir",
                str(self.root / "server-data"),
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "server.log").open("wb"),
        )
        self.url = f"http://127.0.0.1:{_wait_for_port(port_file, self.server)}"
        self.env["FEDGE_SERVER"] = self.url  # what `export FEDGE_SERVER=…` sets on a page

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    @staticmethod
    def _write_digits(data: Path) -> None:
        # Imported here: scikit-learn takes a second to load and --list needs neither.
        import numpy as np  # noqa: PLC0415
        from sklearn.datasets import load_digits  # noqa: PLC0415

        data.mkdir(parents=True)
        x, y = load_digits(return_X_y=True)
        np.savez(data / "digits.npz", x=(x[:200] / 16).astype("float32"), y=y[:200])

    def enrollment_token(self) -> str:
        request = urllib.request.Request(
            f"{self.url}/v1/enrollment-tokens",
            data=json.dumps({"uses": 1, "ttl_s": 3600}).encode(),
            headers={
                "Authorization": f"Bearer {self.env['FEDGE_OPERATOR_TOKEN']}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            token: str = json.load(answer)["token"]
        return token

    def shell(self, cmd: Command, run: Run) -> str | None:
        """Run one command; None if it passed, else what went wrong."""
        text = run.instead.replace("{command}", cmd.text) if run.instead else cmd.text
        text = SERVERS.sub(self.url, text.replace("{url}", self.url))
        if re.search(r"--enroll-token (TOKEN|<token>)", text):
            text = re.sub(r"(TOKEN|<token>)", self.enrollment_token(), text)
        text = re.sub(r"--data (DIR|/srv/digits)", f"--data {self.work / 'data'}", text)
        # Commands of one page share a HOME (init, then status), pages do not.
        home = self.root / "home" / Path(cmd.doc).stem
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "HOME": str(home)}
        if run.background:
            return self._background(text, env, run)
        script = f"set -euo pipefail\n{text}\n{run.then or ''}\n"
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=self.work,
                env=env,
                capture_output=True,
                text=True,
                timeout=run.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {run.timeout:.0f} s: {text}"
        output = done.stdout + done.stderr
        if done.returncode != 0:
            return f"exit {done.returncode}: {text}\n{_tail(output)}"
        if run.expect and not re.search(run.expect, output):
            return f"output lacks /{run.expect}/: {text}\n{_tail(output)}"
        return None

    def _background(self, text: str, env: dict[str, str], run: Run) -> str | None:
        port_file = re.search(r"--port-file (\S+)", text)
        if port_file is None:
            return f"a background rule needs --port-file: {text}"
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {text}"],
            cwd=self.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            port = _wait_for_port(self.work / port_file.group(1), proc, run.timeout)
            tls = re.search(r"--tls-cert (\S+)", text)
            scheme, context = "http", None
            if tls is not None:  # trust exactly the documented certificate
                scheme = "https"
                context = ssl.create_default_context(cafile=str(self.work / tls.group(1)))
                context.check_hostname = False  # its CN is the example host name
            url = f"{scheme}://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, timeout=10, context=context) as r:
                if r.status != 200:
                    return f"/healthz answered {r.status}: {text}"
        except RuntimeError as exc:
            return f"{exc}: {text}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if code != 0:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            return f"exit {code} after SIGTERM: {text}\n{_tail(out)}"
        return None


def _wait_for_port(path: Path, proc: subprocess.Popen[bytes], timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.1)
    raise RuntimeError(f"no port in {path} after {timeout:.0f} s")


Step = tuple[Command, Run, "Command | None"]  # … and the first identical command, if any
PAGE_WORKERS = 2


def _plan(runs: list[tuple[Command, Run]]) -> list[Step]:
    """Runs in phase, then page order. The same command on several pages runs once;
    agent commands depend on their page's HOME, so they are told apart by page."""
    firsts: dict[tuple[str, str], Command] = {}
    plan: list[Step] = []
    for cmd, run in sorted(runs, key=lambda item: item[1].phase):  # stable: page order
        key = (cmd.doc if cmd.text.startswith("fedge agent") else "", cmd.text)
        plan.append((cmd, run, firsts.get(key)))
        firsts.setdefault(key, cmd)
    return plan


def _run_in_order(sandbox: Sandbox, steps: list[Step], failures: list[str]) -> None:
    for cmd, run, same_as in steps:
        if same_as is not None:
            print(f"same       {cmd.doc}:{cmd.line} (run as {same_as.doc}:{same_as.line})")
            continue
        t0 = time.monotonic()
        error = sandbox.shell(cmd, run)
        status = "ok  " if error is None else "FAIL"
        print(f"{status} {time.monotonic() - t0:5.1f} s  {cmd.doc}:{cmd.line}", flush=True)
        if error is not None:
            failures.append(f"{cmd.doc}:{cmd.line}: {error}")  # list.append is atomic


def _alongside(sandbox: Sandbox, cmd: Command, run: Run, failures: list[str]) -> threading.Thread:
    """Run one command in a thread while the others run in order."""

    def body() -> None:
        t0 = time.monotonic()
        error = sandbox.shell(cmd, run)
        took = time.monotonic() - t0
        status = "ok  " if error is None else "FAIL"
        print(f"{status} {took:5.1f} s (in parallel)  {cmd.doc}:{cmd.line}")
        if error is not None:
            failures.append(f"{cmd.doc}:{cmd.line}: {error}")  # list.append is atomic

    thread = threading.Thread(target=body, name=f"docs-{cmd.doc}:{cmd.line}")
    thread.start()
    return thread


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


# --- main -----------------------------------------------------------------------------------


def collect() -> tuple[list[tuple[Command, Rule]], list[str]]:
    cmds: list[Command] = []
    problems: list[str] = []
    for path in doc_files():
        found, bad = commands_in(path)
        cmds += found
        problems += bad
    matched, bad = classify(cmds)
    return matched, problems + bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="show the plan, run nothing")
    args = parser.parse_args(argv)
    matched, problems = collect()
    if args.list:
        for cmd, (_, action) in matched:
            how = f"RUN {action.instead or ''}" if isinstance(action, Run) else action.node
            print(f"{cmd.doc}:{cmd.line}: {cmd.text}\n    → {how}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.list:
        return 0
    nodes = {a.node for _, (_, a) in matched if isinstance(a, Mapped)}
    failures: list[str] = []
    # Collecting the mapped tests takes a while (their modules import TensorFlow):
    # it runs beside the commands.
    collector = threading.Thread(
        target=lambda: failures.extend(
            f"mapped test does not exist: {n}" for n in missing_nodes(nodes)
        )
    )
    collector.start()
    runs = [(c, a) for c, (_, a) in matched if isinstance(a, Run)]
    plan = _plan(runs)
    root = Path(tempfile.mkdtemp(prefix="fedge-docs-"))
    sandbox = Sandbox(root)
    started = time.monotonic()
    try:
        sandbox.start()
        parallel = [_alongside(sandbox, cmd, run, failures) for cmd, run in runs if run.alongside]
        plan = [step for step in plan if not step[1].alongside]
        # Phases 0 and 1 (tokens, the export, pushes) in page order; then each page's
        # commands in order, pages side by side: they share only the server, and their
        # config patches are valid in any order.
        _run_in_order(sandbox, [step for step in plan if step[1].phase < 2], failures)
        pages: dict[str, list[Step]] = {}
        for step in plan:
            if step[1].phase == 2:
                pages.setdefault(step[0].doc, []).append(step)
        with ThreadPoolExecutor(PAGE_WORKERS, thread_name_prefix="docs-page") as pool:
            list(pool.map(lambda steps: _run_in_order(sandbox, steps, failures), pages.values()))
        for thread in [*parallel, collector]:
            thread.join()
    finally:
        sandbox.stop()
        if not failures:
            shutil.rmtree(root, ignore_errors=True)
    repeats = sum(1 for step in plan if step[2] is not None)
    print(
        f"{len(runs) - repeats} commands run ({repeats} more repeat them), "
        f"{len(matched) - len(runs)} mapped to {len(nodes)} tests; "
        f"{time.monotonic() - started:.0f} s, {_children_cpu():.0f} s of CPU in the commands"
    )
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print(f"(scratch directory kept: {root})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
