import csv
import io
import json
import subprocess
import sys

from golden import CANDIDATES, WRN_40_2_CANDIDATE_PARAMS
from opswap.cli import main


def test_positions_wrn_40_2_reproduces_golden_table(capsys):
    assert main(["positions", "wrn-40-2", "--format", "csv"]) == 0
    rows = {int(r["pos"]): r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert len(rows) == 18
    for pos, counts in WRN_40_2_CANDIDATE_PARAMS.items():
        got = tuple(int(rows[pos][c]) if rows[pos][c] else None for c in CANDIDATES)
        assert got == counts
    assert rows[1]["identity_valid"] == "False" and rows[18]["identity_valid"] == "True"


def test_positions_table_format(capsys):
    assert main(["positions", "wrn-40-2"]) == 0
    out = capsys.readouterr().out
    assert "295,424" in out and "206,848" in out and "–" in out
    assert out.splitlines()[0].split()[:3] == ["pos", "path", "c_in"]


def test_ops_json_lists_parameters(capsys):
    assert main(["ops", "--format", "json"]) == 0
    ops = {r["op"]: r for r in json.loads(capsys.readouterr().out)}
    assert ops["mbconv"]["params"] == "e=6, k=3" and ops["mbconv"]["default"] == "mbconv_e6_k3"
    assert ops["identity"]["shape"].startswith("c_in=c_out")


def test_cli_errors_are_one_line_for_people(capsys):
    assert main(["positions", "wrn-41-2"]) == 2
    assert "6n+4" in capsys.readouterr().err
    assert main(["positon", "wrn-40-2"]) == 2
    assert "Did you mean: positions" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "opswap", "--help"], capture_output=True, text=True, check=True)
    assert "positions" in out.stdout and "run" in out.stdout


def test_no_command_is_a_malformed_command_line(capsys):
    assert main([]) == 2
    assert "usage: opswap <command>" in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_not_an_error():
    # `opswap positions ... | head -1`: the pipe is closed before the command writes its table.
    proc = subprocess.Popen([sys.executable, "-m", "opswap", "positions", "wrn-40-2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader left
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err.lower() and "Traceback" not in err
