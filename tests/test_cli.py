import subprocess
import sys


def test_fixtures_bad_preset_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "editx", "fixtures", "make", str(tmp_path), "--preset", "huge"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
