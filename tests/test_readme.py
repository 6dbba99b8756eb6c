"""Every Python snippet in the README runs as written, in a fresh process and an empty
folder (each makes its own data), and the README documents what the CLI does."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
#: The README and the docs pages its sections moved to: their snippets stay tested.
PAGES = ("README.md", "docs/layers.md", "docs/fold.md", "docs/export.md",
         "docs/training.md")
SNIPPETS = [snippet for page in PAGES
            for snippet in re.findall(r"^```python\n(.*?)^```",
                                      open(os.path.join(ROOT, page)).read(),
                                      flags=re.S | re.M)]


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 6


def test_the_readme_is_short_and_starts_with_install():
    """At most 250 lines; what it is, then how to install (a clone, the wheel, the
    extras, the versions tested), and every docs page it links exists."""
    assert len(README.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", README, flags=re.M)
    assert sections[0] == "Install", sections
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    for needed in ("pip install -e .", "python -m build --wheel", "dist/keras_bn-",
                   "`dev`", "`demo`", "`tensorboard`", "| TensorFlow |", "| tf-keras |",
                   "| Keras 3 |", "| JAX", "| torch", "| Python |"):
        assert needed in install, needed
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert os.path.exists(os.path.join(ROOT, link)), link


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"snippet {index}:\n{SNIPPETS[index]}\n{result.stderr[-3000:]}"


def test_exit_statuses_are_documented_as_the_cli_returns_them():
    from keras_bn.cli import command as cli

    help_text = subprocess.run([sys.executable, "-m", "keras_bn.cli", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for code, words in [(cli.EXIT_OK, "done"), (cli.EXIT_FAILED_CHECK, "verification failed"),
                        (cli.EXIT_BAD_INPUT, "bad input"), (cli.EXIT_BUG, "internal error")]:
        for text in (README, help_text):
            assert re.search(rf"\b{code} (a |an |a numerical )?{words}", text), (code, words)
