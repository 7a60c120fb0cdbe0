"""The README's Python program works as written."""

import os
import pathlib
import re
import subprocess
import sys

from conftest import SOON

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_program(daemon, tmp_path):
    program = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(program.strip().splitlines()) <= 10, program
    (tmp_path / "hello.py").write_text(program)
    env = dict(os.environ, HYBUS_SOCKET=daemon.socket)
    out = subprocess.run([sys.executable, str(tmp_path / "hello.py")], capture_output=True, text=True,
                         env=env, timeout=SOON, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "b'HELLO'\n"
