"""The install promises: the edge extra never brings TensorFlow, and the
device-side packages import without it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedge.cli import main

EDGE_PACKAGES = ("fedge", "fedge.manifest", "fedge.runtime", "quantization", "edge_client")


def test_edge_environment_has_no_tensorflow(edge_python: Path) -> None:
    listed = subprocess.run(
        [str(edge_python), "-m", "pip", "list", "--format=freeze"],
        check=True, capture_output=True, text=True,
    ).stdout.lower()
    assert "tensorflow" not in listed
    assert "ai-edge-litert" in listed


def test_edge_packages_import_without_tensorflow(edge_python: Path) -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {EDGE_PACKAGES!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "from fedge.runtime import available_runtimes\n"
        "print(available_runtimes())\n"
    )
    result = subprocess.run(
        [str(edge_python), "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ai-edge-litert" in result.stdout


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_cli_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_cli_output_into_a_closed_pipe_is_not_a_traceback() -> None:
    """`fedge … | head` closes the pipe early: exit like SIGPIPE, no traceback."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import argparse, sys
        import fedge.cli as cli

        def build():
            p = argparse.ArgumentParser()
            p.add_argument("-v", "--verbose", action="store_true")
            def spam(args):
                for _ in range(100_000):
                    print("x" * 100)
                return 0
            p.set_defaults(func=spam, command="spam")
            return p

        cli.build_parser = build
        sys.exit(cli.main([]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr
