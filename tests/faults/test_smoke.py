from conftest import events, wait_for


def test_push_run_pull(remote, fault_project, engines):
    proj = fault_project(config_extra='[sync]\npull = ["out/"]\n')
    proj.write("main.py", "import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt','w').write('hi')\nprint('ok')\n")
    eng = engines.new()
    eng.call_sync("push", proj.ctx(), {}, timeout=60)
    assert (proj.remote_dir / "main.py").exists()
    res = eng.call_sync("run", proj.ctx(), {"cmd": "python3 main.py"}, timeout=60)
    wait_for(lambda: any(e["id"] == res["id"] for e in events(eng, "RemoteDevRunExit")), 30)
    eng.call_sync("pull", proj.ctx(), {}, timeout=60)
    assert (proj.root / "out/r.txt").read_text() == "hi"
    engines.close(eng)
    assert remote.settle() == []
