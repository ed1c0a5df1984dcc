import importlib.util
from pathlib import Path
spec = importlib.util.spec_from_file_location("tkr", Path(__file__).with_name("test_kill_resume.py"))
tkr = importlib.util.module_from_spec(spec); spec.loader.exec_module(tkr)
jobs = tkr.jobs

def test_hang(demo_data, tmp_path, jobs):
    proc = tkr.run(tkr.two_rank_command(demo_data, tmp_path / "out", 20, "write@3"), tmp_path)
    jobs.append(proc)
    tkr.wait_for(lambda: False, proc, timeout=15)
